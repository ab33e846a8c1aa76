"""segzoo.checkpoints: safe reading of torch zip / torch legacy / Paddle / pickle checkpoints, writers of the same
formats, refusal of code in pickles, and exactly-once weight assignment into Keras."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from segzoo.checkpoints import (
    CheckpointError,
    GlobalRef,
    UnresolvedObject,
    WeightPlan,
    assign_weights,
    conv_oihw_to_hwio,
    depthwise_oihw_to_hwim,
    detect_format,
    linear_oi_to_io,
    read_checkpoint,
    read_state_dict,
    transpose_conv_iohw_to_hwoi,
)
from segzoo.checkpoints.torch_files import MAGIC_NUMBER
from segzoo.checkpoints.writers import (
    ForeignObject,
    bfloat16,
    write_pdparams,
    write_torch_legacy,
    write_torch_zip,
)
from segzoo.errors import ModelError

TORCH_WRITERS = {"zip": write_torch_zip, "legacy": write_torch_legacy}


def _tensors() -> OrderedDict:
    """Every storage dtype, 0-d and empty tensors, and views sharing one base (transpose, strided slice)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 6)).astype(np.float32)
    return OrderedDict([
        ("conv.weight", rng.standard_normal((3, 2, 3, 3)).astype(np.float32)),
        ("fc.weight_t", base.T),
        ("fc.weight", base),
        ("fc.slice", base[1:, ::2]),
        ("f64", rng.standard_normal(5)),
        ("f16", rng.standard_normal((2, 3)).astype(np.float16)),
        ("i64", np.array([-(2**40), 0, 7], np.int64)),
        ("i32", np.array([-5, 9], np.int32)),
        ("i16", np.array([-3, 300], np.int16)),
        ("i8", np.array([-128, 127], np.int8)),
        ("u8", np.array([0, 255], np.uint8)),
        ("mask", np.array([[True, False], [False, True]])),
        ("c64", np.array([1 + 2j, -3j], np.complex64)),
        ("scalar", np.array(2.5, np.float32)),
        ("empty", np.zeros((0, 3), np.float32)),
        ("num_batches_tracked", np.array(7, np.int64)),
    ])


BF16_VALUES = np.array([[1.0, -2.5, 0.15625], [3.0e38, -1.0e-3, 0.0]], np.float32)


def _bf16_expected() -> np.ndarray:
    """BF16_VALUES rounded to bfloat16: the first row is exact, the second rounded to 8 significant bits."""
    expected = (bfloat16(BF16_VALUES).bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(expected[0], BF16_VALUES[0])
    assert np.allclose(expected[1], BF16_VALUES[1], rtol=2**-8) and not np.array_equal(expected[1], BF16_VALUES[1])
    return expected


# ----------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", TORCH_WRITERS)
def test_torch_round_trip_every_dtype_view_and_shared_storage(tmp_path: Path, fmt: str) -> None:
    tensors = _tensors()
    path = TORCH_WRITERS[fmt](tmp_path / "model.pth", {"state_dict": {**tensors, "bf16": bfloat16(BF16_VALUES)},
                                                         "epoch": 12, "meta": {"classes": ("road", "car")}})
    out = read_checkpoint(path)
    assert out["epoch"] == 12 and out["meta"] == {"classes": ("road", "car")}
    state = out["state_dict"]
    assert list(state) == [*tensors, "bf16"]
    for name, expected in tensors.items():
        got = state[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert np.array_equal(got, expected), name
        assert got.flags.c_contiguous and got.dtype.isnative, name
    assert state["bf16"].dtype == np.float32 and np.array_equal(state["bf16"], _bf16_expected())
    assert not np.shares_memory(state["fc.weight"], state["fc.weight_t"])  # views come back as copies


def test_views_share_one_storage_in_the_written_file(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    path = write_torch_zip(tmp_path / "views.pt", {"a": base, "t": base.T, "s": base[1:3, 2:]})
    with zipfile.ZipFile(path) as archive:
        storages = [info for info in archive.infolist() if "/data/" in info.filename]
    assert [(s.filename, s.file_size) for s in storages] == [("views/data/0", 96)]  # one storage, three tensors
    out = read_checkpoint(path)
    assert np.array_equal(out["t"], base.T) and np.array_equal(out["s"], base[1:3, 2:])


def test_big_endian_zip_is_byteswapped(tmp_path: Path) -> None:
    tensors = {"w": np.array([1.5, -2.0, 3.25], np.float32), "n": np.array([1, -2**40], np.int64),
               "h": np.array([0.5, -8.0], np.float16), "bf": bfloat16(BF16_VALUES)}
    path = write_torch_zip(tmp_path / "be.pt", tensors, byteorder="big")
    with zipfile.ZipFile(path) as archive:
        assert archive.read("be/byteorder") == b"big"
        assert archive.read("be/data/0") == tensors["w"].astype(">f4").tobytes()
    out = read_checkpoint(path)
    for name in ("w", "n", "h"):
        assert out[name].dtype.isnative and np.array_equal(out[name], tensors[name])
    assert np.array_equal(out["bf"], _bf16_expected())


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_pdparams_round_trip(tmp_path: Path, protocol: int) -> None:
    state = {"backbone.conv.weight": np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32),
             "head.bias": np.arange(4, dtype=np.float32), "bn._variance": np.ones(4, np.float32)}
    path = write_pdparams(tmp_path / "model.pdparams", state, protocol=protocol)
    assert detect_format(path).name == "pickle"
    raw = read_checkpoint(path)
    assert raw["StructuredToParameterName@@"] == {name: f"param_{i}.w_0" for i, name in enumerate(state)}
    weights = read_state_dict(path)
    assert list(weights) == list(state)
    assert all(np.array_equal(weights[k], v) and weights[k].dtype == v.dtype for k, v in state.items())


def test_pdparams_tensor_tuples_and_numpy1_module_names(tmp_path: Path) -> None:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.float64)}
    path = write_pdparams(tmp_path / "t.pdparams", state, protocol=2, tensor_tuples=True)
    assert read_checkpoint(path)["w"][0] == "param_0.w_0"  # Paddle 2.1+ (name, ndarray) tuples
    assert all(np.array_equal(read_state_dict(path)[k], v) for k, v in state.items())
    # NumPy 1.x writes numpy.core.multiarray; NumPy 2 writes numpy._core.multiarray: both are read
    data = pickle.dumps(state, protocol=2)
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        variant = tmp_path / "variant.pdparams"
        variant.write_bytes(re.sub(rb"numpy\._?core\.multiarray", module, data))
        assert module in variant.read_bytes()
        assert all(np.array_equal(read_checkpoint(variant)[k], v) for k, v in state.items())


def test_paddle_big_parameter_slices_are_joined(tmp_path: Path) -> None:
    whole = np.arange(12, dtype=np.float32).reshape(3, 4)
    flat = whole.reshape(-1)
    obj = {"w@@.0": flat[:5], "w@@.1": flat[5:], "b": np.zeros(2, np.float32),
           "UnpackBigParamInfor@@": {"w": {"OriginShape": (3, 4), "slices": ["w@@.0", "w@@.1"]}}}
    path = tmp_path / "split.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    out = read_checkpoint(path)
    assert sorted(out) == ["b", "w"] and np.array_equal(out["w"], whole)


def test_plain_pickle_numpy_layouts_scalars_and_namespace(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    obj = {"fortran": np.asfortranarray(a), "big": a.astype(">f4"), "f64": np.float64(2.5), "i": np.int64(-3),
           "u": np.str_("ab"), "args": argparse.Namespace(lr=0.01, size=[512, 512]), "set": {1, 2},
           "bytes": b"\x00\xff", "od": OrderedDict(a=1), "none": None, "c": 1 + 2j}
    for protocol in range(6):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        out = read_checkpoint(path)
        assert np.array_equal(out["fortran"], a) and out["fortran"].flags.c_contiguous
        assert np.array_equal(out["big"], a) and out["big"].dtype.isnative
        assert out["f64"] == 2.5 and isinstance(out["f64"], np.float64) and out["i"] == -3 and out["u"] == "ab"
        assert out["args"] == argparse.Namespace(lr=0.01, size=[512, 512])
        assert out["set"] == {1, 2} and out["bytes"] == b"\x00\xff" and out["od"] == OrderedDict(a=1)
        assert out["none"] is None and out["c"] == 1 + 2j


def test_python2_era_pickle_with_byte_strings(tmp_path: Path) -> None:
    """Python 2 pickled NumPy arrays with str (BINSTRING) data and dtype('f4', 0, 1); read as latin-1 bytes."""
    raw = np.array([1.5, -2.0], np.float32).tobytes()
    data = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01K\x02\x85"
            b"cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x08"
            + raw + b"tb.")
    assert np.array_equal(pickle.loads(data, encoding="latin1"), [1.5, -2.0])  # what NumPy itself makes of it
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    out = read_checkpoint(path)
    assert out.dtype == np.float32 and np.array_equal(out, [1.5, -2.0])


def test_deep_nesting_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")
    with pytest.raises(CheckpointError, match="deep.pkl: the pickled object is nested too deeply"):
        read_checkpoint(path)


# --------------------------------------------------------------------------- byte layout the real torch reads
# `pickletools.dis` of torch.save(TinyNet().state_dict()) (torch 2.x): the first tensor, conv.weight of shape
# (2, 1, 3, 3), as documented opcode by opcode (offset: opcode, argument).
TORCH_SAVE_DATA_PKL = {
    0: ("PROTO", 2), 2: ("GLOBAL", "collections OrderedDict"), 29: ("EMPTY_TUPLE", None), 30: ("REDUCE", None),
    33: ("MARK", None), 34: ("BINUNICODE", "conv.weight"), 52: ("GLOBAL", "torch._utils _rebuild_tensor_v2"),
    87: ("MARK", None), 88: ("MARK", None), 89: ("BINUNICODE", "storage"), 103: ("GLOBAL", "torch FloatStorage"),
    125: ("BINUNICODE", "0"), 133: ("BINUNICODE", "cpu"), 143: ("BININT1", 18), 145: ("TUPLE", None),
    148: ("BINPERSID", None), 149: ("BININT1", 0), 151: ("MARK", None), 152: ("BININT1", 2), 154: ("BININT1", 1),
    156: ("BININT1", 3), 158: ("BININT1", 3), 160: ("TUPLE", None), 163: ("MARK", None), 164: ("BININT1", 9),
    175: ("NEWFALSE", None), 176: ("BINGET", 0), 178: ("EMPTY_TUPLE", None), 179: ("REDUCE", None),
    182: ("TUPLE", None), 185: ("REDUCE", None),
}


def test_zip_writer_matches_torch_save_byte_layout(tmp_path: Path) -> None:
    state = OrderedDict([("conv.weight", np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3)),
                         ("conv.bias", np.zeros(2, np.float32)), ("bn.num_batches_tracked", np.array(0))])
    path = write_torch_zip(tmp_path / "tinynet_state_dict.pt", state)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names == ["tinynet_state_dict/data.pkl", "tinynet_state_dict/byteorder",
                         "tinynet_state_dict/data/0", "tinynet_state_dict/data/1", "tinynet_state_dict/data/2",
                         "tinynet_state_dict/version"]
        assert archive.read("tinynet_state_dict/version") == b"3\n"
        assert archive.read("tinynet_state_dict/byteorder") == b"little"
        assert archive.read("tinynet_state_dict/data/0") == state["conv.weight"].tobytes()
        assert archive.read("tinynet_state_dict/data/2") == struct.pack("<q", 0)
        data_pkl = archive.read("tinynet_state_dict/data.pkl")
        raw = path.read_bytes()
        for info in archive.infolist():  # record data on 64-byte boundaries, padded by an "FB" extra field
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            assert raw[info.header_offset + 30 + name_len:][:2] == b"FB"
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
    ops = {pos: (op.name, arg) for op, arg, pos in pickletools.genops(data_pkl)}
    for pos, expected in TORCH_SAVE_DATA_PKL.items():
        assert ops.get(pos) == expected, f"data.pkl byte {pos}: {ops.get(pos)} != {expected}"


def test_zip_writer_pickles_a_tensor_byte_for_byte_like_torch_save(tmp_path: Path) -> None:
    """data.pkl of torch.save(torch.arange(12.).reshape(3, 4)), opcode by opcode, as torch 1.x/2.x writes it."""
    expected = (b"\x80\x02" + _g("torch._utils", "_rebuild_tensor_v2") + b"q\x00((" + _s("storage") + b"q\x01"
                + _g("torch", "FloatStorage") + b"q\x02" + _s("0") + b"q\x03" + _s("cpu") + b"q\x04K\x0ctq\x05Q"
                + b"K\x00K\x03K\x04\x86q\x06K\x04K\x01\x86q\x07\x89" + _g("collections", "OrderedDict")
                + b"q\x08)Rq\ttq\nRq\x0b.")
    tensor = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_torch_zip(tmp_path / "t.pt", tensor, archive_name="archive")
    with zipfile.ZipFile(path) as archive:
        assert archive.read("archive/data.pkl") == expected
        assert archive.read("archive/data/0") == tensor.tobytes()
    assert np.array_equal(read_checkpoint(path), tensor)


def test_legacy_writer_byte_layout(tmp_path: Path) -> None:
    weight = np.array([1.0, 2.0, 3.0], np.float32)
    path = write_torch_legacy(tmp_path / "old.pth.tar", {"w": weight})
    raw = path.read_bytes()
    magic = pickle.dumps(MAGIC_NUMBER, protocol=2)
    assert raw.startswith(magic + pickle.dumps(1001, protocol=2))
    assert detect_format(path).name == "torch legacy"
    stream = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, sys_info
        pickle.load(stream)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(stream)]
    persid = [name for name, _ in ops].index("BINPERSID")
    # ('storage', torch.FloatStorage, '0', 'cpu', 3, None): six fields, no storage view
    assert ops[persid - 13:persid + 1] == [
        ("MARK", None), ("BINUNICODE", "storage"), ("BINPUT", 3), ("GLOBAL", "torch FloatStorage"), ("BINPUT", 4),
        ("BINUNICODE", "0"), ("BINPUT", 5), ("BINUNICODE", "cpu"), ("BINPUT", 6), ("BININT1", 3), ("NONE", None),
        ("TUPLE", None), ("BINPUT", 7), ("BINPERSID", None)]
    # after the key list: int64 element count, then the little-endian bytes
    assert raw.endswith(pickle.dumps(["0"], protocol=2) + struct.pack("<q", 3) + weight.tobytes())


def test_hand_made_rebuild_v3_untyped_storage_and_parameter(tmp_path: Path) -> None:
    """torch >= 2 pickles some dtypes as _rebuild_tensor_v3 over an UntypedStorage; parameters wrap tensors."""
    bits = bfloat16(np.arange(6, dtype=np.float32)).bits
    data_pkl = (b"\x80\x02}(" + _s("w") + _g("torch._utils", "_rebuild_parameter") + b"("
                + _g("torch._utils", "_rebuild_tensor_v3") + b"((" + _s("storage")
                + _g("torch.storage", "UntypedStorage") + _s("0") + _s("cpu") + _i(12) + b"tQ" + _i(0)
                + b"(" + _i(2) + _i(3) + b"t(" + _i(1) + _i(2) + b"t\x89" + _g("collections", "OrderedDict")
                + b")R" + _g("torch", "bfloat16") + b"tR\x88" + _g("collections", "OrderedDict") + b")RtRu.")
    path = _zip(tmp_path / "v3.pt", {"data.pkl": data_pkl, "data/0": bits.tobytes(), "version": b"3\n"})
    out = read_checkpoint(path)
    assert out["w"].dtype == np.float32 and np.array_equal(out["w"], np.arange(6.0).reshape(3, 2).T)
    fp8 = data_pkl.replace(b"bfloat16", b"float8_e4m3fn")
    with pytest.raises(CheckpointError, match="float8_e4m3fn.*no NumPy equivalent"):
        read_checkpoint(_zip(tmp_path / "fp8.pt", {"data.pkl": fp8, "data/0": bits.tobytes(), "version": b"3\n"}))


def _g(module: str, name: str) -> bytes:
    """Pickle opcode GLOBAL."""
    return b"c" + f"{module}\n{name}\n".encode()


def _s(text: str) -> bytes:
    """Pickle opcode BINUNICODE."""
    return b"X" + struct.pack("<I", len(text)) + text.encode()


def _i(value: int) -> bytes:
    """Pickle opcode BININT."""
    return b"J" + struct.pack("<i", value)


def _zip(path: Path, records: dict[str, bytes], root: str = "archive") -> Path:
    """A plain zip archive of ``records`` under ``root/`` (no torch alignment)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(f"{root}/{name}", data)
    return path


# -------------------------------------------------------------------------------------------- hostile pickles
class _ShellPayload:
    """Pickles as os.system('touch <target>') (the global is posix.system on Linux)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _EvalPayload:
    """Pickles as builtins.eval("open(<target>, 'w').close()")."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return eval, (f"open({str(self.target)!r}, 'w').close()",)


PAYLOADS = {"posix.system": _ShellPayload, "builtins.eval": _EvalPayload}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_are_real(tmp_path: Path, payload: str) -> None:
    """Control: the standard unpickler does run these payloads (so the refusals below prove something)."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps({"w": PAYLOADS[payload](control)}))
    assert control.exists()


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("payload", PAYLOADS)
def test_malicious_plain_pickle_is_refused_and_not_run(tmp_path: Path, payload: str, protocol: int) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "model.pdparams"
    path.write_bytes(pickle.dumps({"w": np.zeros(2), "x": PAYLOADS[payload](target)}, protocol=protocol))
    for read in (read_checkpoint, read_state_dict, lambda p: read_checkpoint(p, lenient=True)):
        with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}.*{payload}.*malicious.*Nothing from"):
            read(path)
    assert not target.exists()


@pytest.mark.parametrize("fmt", TORCH_WRITERS)
def test_malicious_torch_checkpoint_is_refused_and_not_run(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "pwned"
    obj = {"state_dict": {"w": np.ones(3, np.float32)},
           "meta": ForeignObject("posix", "system", (f"touch {target}",))}
    path = TORCH_WRITERS[fmt](tmp_path / "model.pth", obj)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}.*posix.system"):
        read_state_dict(path)
    assert not target.exists()


def test_global_computed_at_run_time_is_refused_before_it_is_called(tmp_path: Path) -> None:
    """STACK_GLOBAL fed through a POP: not resolvable by the pre-scan, refused when met."""
    def payload(target: Path) -> bytes:
        command = f"touch {target}".encode()
        return (b"\x80\x04\x8c\x05posix\x8c\x03sys0\x8c\x06system\x93\x8c" + bytes([len(command)]) + command
                + b"\x85R.")

    pickle.loads(payload(tmp_path / "control"))
    assert (tmp_path / "control").exists()  # the payload is real
    target = tmp_path / "pwned"
    path = tmp_path / "stack.pkl"
    path.write_bytes(payload(target))
    with pytest.raises(CheckpointError, match="posix.system"):
        read_checkpoint(path, lenient=True)
    assert not target.exists()


def test_object_arrays_and_unknown_opcodes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"a": np.array([1, None], dtype=object)}, protocol=2))
    with pytest.raises(CheckpointError, match="numpy.dtype.*'O8'.*not a plain numeric"):
        read_checkpoint(path)
    path.write_bytes(b"\x80\x02\x82\x01.")  # EXT1: the copyreg extension registry
    with pytest.raises(CheckpointError, match="EXT1.*not supported"):
        read_checkpoint(path)


# ------------------------------------------------------------------------------- allow-list and lenient reads
def _mmseg_checkpoint(tmp_path: Path, **extra) -> tuple[Path, dict]:
    state = {"backbone.conv1.weight": np.ones((2, 3, 3, 3), np.float32), "decode_head.conv_seg.bias": np.zeros(2)}
    history = ForeignObject("mmengine.logging.history_buffer", "HistoryBuffer", (),
                            {"_log_history": np.array([0.5, 0.25]), "max_length": 10})
    obj = {"meta": {"mmengine_version": "0.10.4", "dataset_meta": {"classes": ("road", "car")}},
           "state_dict": state, "message_hub": {"log_scalars": {"train/loss": history}}, **extra}
    return write_torch_zip(tmp_path / "pidnet_mmseg.pth", obj), state


def test_unknown_global_refused_by_strict_read_and_inert_in_lenient_read(tmp_path: Path) -> None:
    path, state = _mmseg_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="mmengine.logging.history_buffer.HistoryBuffer is not on segzoo's "
                                              "allow-list.*read_state_dict"):
        read_checkpoint(path)
    lenient = read_checkpoint(path, lenient=True)
    buffer = lenient["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, UnresolvedObject) and buffer.qualname == "mmengine.logging.history_buffer.HistoryBuffer"
    assert np.array_equal(buffer.state["_log_history"], [0.5, 0.25])  # kept as data, constructor never run
    weights = read_state_dict(path)
    assert sorted(weights) == sorted(state) and np.all(weights["backbone.conv1.weight"] == 1.0)


def test_unresolved_object_inside_the_state_dict_is_an_error(tmp_path: Path) -> None:
    obj = {"state_dict": {"w": np.ones(2, np.float32), "ema": ForeignObject("timm.utils", "ModelEma")}}
    path = write_torch_zip(tmp_path / "ema.pth", obj)
    with pytest.raises(CheckpointError, match=r"state dict \(entry 'state_dict'\).*ema \(timm.utils.ModelEma\)"):
        read_state_dict(path)


def test_read_state_dict_prefixes_strip_and_flattening(tmp_path: Path) -> None:
    weights = {"module.backbone.w": np.ones(2, np.float32), "module.head.b": np.zeros(1, np.float32)}
    path = write_torch_zip(tmp_path / "sam.pt", {"model": weights, "epoch": 3})
    assert sorted(read_state_dict(path)) == sorted(weights)
    assert sorted(read_state_dict(path, strip=("module.",))) == ["backbone.w", "head.b"]
    assert sorted(read_state_dict(path, prefixes=())) == ["model.module.backbone.w", "model.module.head.b"]
    with pytest.raises(CheckpointError, match="both become 'w'"):
        read_state_dict(write_torch_zip(tmp_path / "dup.pt", {"a.w": np.ones(1), "w": np.ones(1)}), strip="a.")
    with pytest.raises(CheckpointError, match="no arrays found.*epoch"):
        read_state_dict(write_torch_zip(tmp_path / "none.pt", {"epoch": 1}))


# ------------------------------------------------------------------------------------ corrupt and odd files
def test_truncated_and_corrupt_files_name_the_file_and_the_fault(tmp_path: Path) -> None:
    state = {"w": np.arange(64, dtype=np.float32)}
    cases = {}
    zipped = write_torch_zip(tmp_path / "ok.pt", state).read_bytes()
    cases["zip_cut.pt"] = (zipped[: len(zipped) // 2], "not a readable zip archive")
    legacy = write_torch_legacy(tmp_path / "ok.tar", state).read_bytes()
    cases["legacy_cut_data.tar"] = (legacy[:-3], "ends before the 64 x float32 data of storage 0")
    cases["legacy_cut_pickle.tar"] = (legacy[:60], "BINUNICODE at byte 53 .the data ends there: truncated")
    cases["legacy_no_stop.tar"] = (legacy[:136], "ends at byte 136 before the pickle's STOP")
    pdparams = write_pdparams(tmp_path / "ok.pdparams", state).read_bytes()
    cases["cut.pdparams"] = (pdparams[: len(pdparams) - 10], "truncated")
    cases["empty.pt"] = (b"", "empty")
    cases["text.pt"] = (b"\x00\x01version https://git-lfs", "not a PyTorch, Paddle or pickle checkpoint")
    cases["array.npy"] = (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'", "NumPy .npy array file")
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}.*{message}"):
            read_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing.pt.*cannot read"):
        read_checkpoint(tmp_path / "missing.pt")


def test_bad_zip_contents(tmp_path: Path) -> None:
    good = write_torch_zip(tmp_path / "good.pt", {"w": np.arange(6, dtype=np.float32)})
    with zipfile.ZipFile(good) as archive:
        data_pkl = archive.read("good/data.pkl")
        storage = archive.read("good/data/0")
    short = _zip(tmp_path / "short.pt", {"data.pkl": data_pkl, "data/0": storage[:-4], "version": b"3\n"})
    with pytest.raises(CheckpointError, match="short.pt.*data/0 holds 20 bytes but the pickle declares 6 x float32"):
        read_checkpoint(short)
    absent = _zip(tmp_path / "absent.pt", {"data.pkl": data_pkl, "version": b"3\n"})
    with pytest.raises(CheckpointError, match="absent.pt.*archive/data/0 is missing"):
        read_checkpoint(absent)
    no_pkl = _zip(tmp_path / "nopkl.pt", {"weights.bin": storage})
    with pytest.raises(CheckpointError, match="nopkl.pt.*without <root>/data.pkl"):
        read_checkpoint(no_pkl)
    script = _zip(tmp_path / "script.pt", {"data.pkl": data_pkl, "constants.pkl": b"", "version": b"3\n"})
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_checkpoint(script)
    # a tensor reaching past its storage: size (2, 3) with stride (3, 1) over 4 elements
    past = (b"\x80\x02}(" + _s("w") + _g("torch._utils", "_rebuild_tensor_v2") + b"((" + _s("storage")
            + _g("torch", "FloatStorage") + _s("0") + _s("cpu") + _i(4) + b"tQ" + _i(0) + b"(" + _i(2) + _i(3)
            + b"t(" + _i(3) + _i(1) + b"t\x89" + _g("collections", "OrderedDict") + b")RtRu.")
    overrun = _zip(tmp_path / "overrun.pt", {"data.pkl": past, "data/0": bytes(16), "version": b"3\n"})
    with pytest.raises(CheckpointError, match="overrun.pt.*storage holds 4 elements.*reads element 5"):
        read_checkpoint(overrun)
    # a forged directory entry claiming 1 GB for a 16-byte record is refused before any allocation
    huge = past.replace(_i(4), _i(250_000_000))
    forged = _zip(tmp_path / "forged.pt", {"data.pkl": huge, "data/0": bytes(16), "version": b"3\n"})
    raw = bytearray(forged.read_bytes())
    entry = raw.rindex(b"archive/data/0") - 46  # its central-directory header (the name's last occurrence)
    assert raw[entry:entry + 4] == b"PK\x01\x02"
    raw[entry + 20:entry + 28] = struct.pack("<II", 10**9, 10**9)  # compressed and uncompressed sizes
    forged.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="forged.pt.*claims 1000000000 bytes, more than the file holds"):
        read_checkpoint(forged)


def test_old_tar_checkpoints_are_refused_clearly(tmp_path: Path) -> None:
    member = tmp_path / "storages"
    member.write_bytes(b"\x80\x02K\x00.")
    path = tmp_path / "ancient.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(member, arcname="storages")
    with pytest.raises(CheckpointError, match="ancient.pth.*tar checkpoint of torch before 0.4"):
        read_checkpoint(path)


def test_reading_imports_neither_tensorflow_nor_torch(tmp_path: Path) -> None:
    path = write_torch_zip(tmp_path / "w.pt", {"w": np.ones(2, np.float32)})
    code = ("import sys; from segzoo.checkpoints import read_state_dict; "
            f"assert read_state_dict({str(path)!r})['w'].sum() == 2; "
            "bad = [m for m in ('tensorflow', 'keras', 'torch', 'paddle') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])})


# --------------------------------------------------------------------------------------- weight assignment
def _torch_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, groups: int = 1) -> np.ndarray:
    """PyTorch Conv2d semantics (NCHW input, OIHW weight, no padding, stride 1) in NumPy."""
    n, c, h, wd = x.shape
    out_c, in_per_group, kh, kw = w.shape
    out = np.zeros((n, out_c, h - kh + 1, wd - kw + 1))
    per_group_out = out_c // groups
    for o in range(out_c):
        g = o // per_group_out
        for i in range(h - kh + 1):
            for j in range(wd - kw + 1):
                patch = x[:, g * in_per_group:(g + 1) * in_per_group, i:i + kh, j:j + kw]
                out[:, o, i, j] = np.sum(patch * w[o], axis=(1, 2, 3)) + b[o]
    return out


def _torch_conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """PyTorch ConvTranspose2d semantics (IOHW weight, no padding) in NumPy."""
    n, c, h, wd = x.shape
    _, out_c, kh, kw = w.shape
    out = np.zeros((n, out_c, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            out[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "nc,cokl->nokl", x[:, :, i, j], w)
    return out + b[None, :, None, None]


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2)


def test_transforms_import_torch_layers_into_keras_exactly() -> None:
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 7, 2)).astype(np.float32)
    cases = {  # PyTorch layer: Keras layer, transform, weight shape, bias size, NumPy forward of PyTorch semantics
        "conv": (keras.layers.Conv2D(3, 3), conv_oihw_to_hwio, (3, 2, 3, 3), 3,
                 lambda w, b: _torch_conv2d(_nchw(x), w, b)),
        "depthwise": (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), lambda w: depthwise_oihw_to_hwim(w, 2),
                      (4, 1, 3, 3), 4, lambda w, b: _torch_conv2d(_nchw(x), w, b, groups=2)),
        "deconv": (keras.layers.Conv2DTranspose(3, 3, strides=2), transpose_conv_iohw_to_hwoi, (2, 3, 3, 3), 3,
                   lambda w, b: _torch_conv_transpose2d(_nchw(x), w, b, 2)),
    }
    for name, (layer, transform, shape, bias_size, reference) in cases.items():
        model = keras.Sequential([keras.Input(x.shape[1:]), layer])
        state = {f"{name}.weight": rng.standard_normal(shape).astype(np.float32),
                 f"{name}.bias": rng.standard_normal(bias_size).astype(np.float32)}
        plan = WeightPlan().add(layer.kernel, f"{name}.weight", transform).add(layer.bias, f"{name}.bias")
        report = assign_weights(plan, state, source=f"{name}.pth", model=model)
        assert report.assigned == 2
        got = _nchw(np.asarray(model(x)))
        expected = reference(state[f"{name}.weight"], state[f"{name}.bias"])
        assert np.abs(got - expected).max() < 1e-4, name
    dense = keras.layers.Dense(4)
    model = keras.Sequential([keras.Input((5,)), dense])
    w, b = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    assign_weights(WeightPlan().add(dense.kernel, "fc.weight", linear_oi_to_io).add(dense.bias, "fc.bias"),
                   {"fc.weight": w, "fc.bias": b}, model=model)
    v = rng.standard_normal((2, 5)).astype(np.float32)
    assert np.abs(np.asarray(model(v)) - (v @ w.T + b)).max() < 1e-5


def test_assign_weights_lists_every_problem_and_assigns_nothing() -> None:
    keras = pytest.importorskip("keras")
    dense, norm = keras.layers.Dense(3, name="fc"), keras.layers.BatchNormalization(name="bn")
    model = keras.Sequential([keras.Input((4,)), dense, norm])
    before = [np.array(v) for v in model.weights]
    state = {"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.ones(3, np.float32),
             "bn.weight": np.ones(5, np.float32), "bn.bias": np.ones(3, np.float32),
             "bn.running_mean": np.ones(3, np.float32), "bn.num_batches_tracked": np.array(10),
             "aux_head.weight": np.ones((2, 2), np.float32)}
    plan = (WeightPlan().add(dense.kernel, "fc.weight", linear_oi_to_io).add(dense.bias, "fc.bais")
            .add(norm.gamma, "bn.weight").add(norm.beta, "bn.bias").add(norm.moving_mean, "bn.running_mean")
            .add(norm.moving_mean, "bn.bias"))
    with pytest.raises(ModelError) as info:
        assign_weights(plan, state, ignore=("num_batches_tracked",), source="PIDNet_S_ImageNet.pth.tar",
                       model=model)
    message = str(info.value)
    assert message.startswith("PIDNet_S_ImageNet.pth.tar: cannot import the weights (6 problems; nothing was")
    assert re.search(r"\S*bn/moving_mean from bn.running_mean, bn.bias", message)  # planned twice
    assert re.search(r"fc.bais \(for \S*fc/bias\); closest key in the file: fc.bias", message)  # missing
    assert re.search(r"bn.weight: file shape \(5,\), but \S*bn/gamma has shape \(3,\)", message)  # mis-shaped
    assert "aux_head.weight (2, 2)" in message and "fc.bias (3,)" in message  # unused
    assert "num_batches_tracked" not in message  # ignored
    assert re.search(r"\S*bn/moving_variance \(3,\) is never planned", message)
    assert all(np.array_equal(np.array(v), b) for v, b in zip(model.weights, before))  # nothing assigned


def test_transforms_reject_wrong_layouts() -> None:
    with pytest.raises(ValueError, match=r"4-D \[out, in, kh, kw\].*\(3, 3\)"):
        conv_oihw_to_hwio(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"depthwise kernel \[C\*2, 1, kh, kw\]"):
        depthwise_oihw_to_hwim(np.ones((3, 1, 3, 3)), 2)
    assert depthwise_oihw_to_hwim(np.arange(4 * 9).reshape(4, 1, 3, 3), 2).shape == (3, 3, 2, 2)


def test_globals_as_values_become_references(tmp_path: Path) -> None:
    path = tmp_path / "cfg.pkl"
    path.write_bytes(pickle.dumps({"kind": OrderedDict, "args": argparse.Namespace(a=1)}, protocol=2))
    out = read_checkpoint(path)
    assert out["kind"] == GlobalRef("collections.OrderedDict") and out["args"].a == 1
