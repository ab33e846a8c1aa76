"""The training loop: ``Trainer.train_step`` / ``test_step`` under ``strategy.run``, driven epoch by epoch with
Keras callbacks.

Keras 3's ``Model.fit`` does not run under ``MultiWorkerMirroredStrategy`` in TensorFlow 2.21 (its symbolic build
reduces a per-replica batch to a tensor, and its per-step logs are reduced with an axis scalars do not have; an
open problem upstream, keras-team/keras#20585), so every strategy trains through this loop, which keeps what
``fit`` gave: the same callbacks (checkpoints, CSV log, MLflow, learning-rate schedule, early stopping,
TensorBoard, a progress bar), the same logs (``loss``, ``loss_<term>``, ``miou`` and their ``val_`` versions),
``steps_per_execution`` and XLA.

Every worker runs the same sequence of collective operations: the steps, the reads of the metrics (sync-on-read
variables summed over replicas and workers) and, with several workers, the per-epoch agreement on the learning rate
and on stopping, both taken from the chief (whose callbacks hold the restored state of an interrupted run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from segzoo.training.distribution import Distribution

logger = logging.getLogger(__name__)


@dataclass
class LoopData:
    """The distributed inputs of a run: an endless training stream, and a validation set (a pass per iterator)."""

    train: Any
    steps_per_epoch: int
    validation: Any = None
    validation_steps: int = 0


class TrainingLoop:
    """Train ``trainer`` under ``distribution`` (its variables created in the strategy's scope)."""

    def __init__(self, trainer: keras.Model, distribution: Distribution, *, jit_compile: bool = False,
                 steps_per_execution: int = 1) -> None:
        self.trainer, self.distribution = trainer, distribution
        self.strategy = distribution.strategy
        self.steps_per_execution = max(1, int(steps_per_execution))
        self._train_steps = self._compiled(trainer.train_step, jit_compile)
        self._test_steps = self._compiled(trainer.test_step, jit_compile)
        self._from_chief = FromChief(self.strategy) if distribution.num_workers > 1 else None

    def _compiled(self, step: Callable[[Any], None], jit_compile: bool) -> Callable[[Iterator, tf.Tensor], None]:
        replica_step = tf.function(step, jit_compile=True) if jit_compile else step
        strategy = self.strategy

        @tf.function
        def run_steps(iterator: Iterator, steps: tf.Tensor) -> None:
            for _ in tf.range(steps):
                strategy.run(replica_step, args=(next(iterator),))

        return run_steps

    def _run(self, function: Callable, iterator: Iterator, steps: int, on_chunk: Callable[[int], None]) -> None:
        done = 0
        while done < steps:
            chunk = min(self.steps_per_execution, steps - done)
            function(iterator, tf.constant(chunk, tf.int64))
            done += chunk
            on_chunk(done - 1)

    def fit(self, data: LoopData, *, epochs: int, initial_epoch: int,
            callbacks: keras.callbacks.CallbackList) -> dict[str, float]:
        """Epochs ``initial_epoch..epochs-1``; the last epoch's logs."""
        trainer, logs = self.trainer, {}
        trainer.stop_training = False
        callbacks.set_model(trainer)
        callbacks.on_train_begin()
        train_iterator = iter(data.train)
        for epoch in range(initial_epoch, epochs):
            trainer.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            self._agree_on_learning_rate()
            self._run(self._train_steps, train_iterator, data.steps_per_epoch,
                      lambda step: callbacks.on_train_batch_end(step, {}))
            logs = trainer.metric_results()
            if data.validation is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(data, callbacks).items()})
            callbacks.on_epoch_end(epoch, logs)
            if self._agree_to_stop(bool(trainer.stop_training)):
                logger.info("Training stopped after epoch %d", epoch + 1)
                break
        callbacks.on_train_end(logs)
        return logs

    def evaluate(self, data: LoopData, callbacks: keras.callbacks.CallbackList) -> dict[str, float]:
        """One validation pass; the metrics over every replica."""
        self.trainer.reset_metrics()
        callbacks.on_test_begin()
        self._run(self._test_steps, iter(data.validation), data.validation_steps,
                  lambda step: callbacks.on_test_batch_end(step, {}))
        results = self.trainer.metric_results()
        callbacks.on_test_end(results)
        return results

    # ------------------------------------------------------------------------------ agreement between workers
    def _agree_on_learning_rate(self) -> None:
        """Every worker trains the epoch with the chief's learning rate (a plateau schedule decides on the chief)."""
        if self._from_chief is None:
            return
        optimizer = self.trainer.optimizer
        optimizer.learning_rate = float(self._from_chief([tf.cast(optimizer.learning_rate, tf.float32)])[0])

    def _agree_to_stop(self, stop: bool) -> bool:
        """Every worker stops when the chief's callbacks stop (early stopping)."""
        if self._from_chief is None:
            return stop
        return bool(self._from_chief([tf.constant(float(stop))])[0] > 0.5)


class FromChief:
    """Gives every worker the chief's values: a sum over replicas where only replica 0 (on the chief) contributes,
    one all-reduce per dtype, compiled once per structure of values."""

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        self.strategy = strategy

        def chief_sum(groups: tuple[tuple[tf.Tensor, ...], ...]) -> list[list[tf.Tensor]]:
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            return [context.all_reduce(tf.distribute.ReduceOp.SUM,
                                       [tf.where(first, v, tf.zeros_like(v)) for v in group]) for group in groups]

        self._run = tf.function(lambda groups: strategy.run(chief_sum, args=(groups,)))

    def __call__(self, values: list[tf.Tensor]) -> list[tf.Tensor]:
        by_dtype: dict[tf.DType, list[int]] = {}
        for index, value in enumerate(values):
            by_dtype.setdefault(value.dtype, []).append(index)
        groups = tuple(tuple(values[i] for i in indices) for indices in by_dtype.values())
        out: list[tf.Tensor] = list(values)
        for indices, group in zip(by_dtype.values(), self._run(groups)):
            for index, value in zip(indices, group):
                out[index] = self.strategy.experimental_local_results(value)[0]
        return out


def broadcast_from_chief(strategy: tf.distribute.Strategy, values: list[tf.Tensor]) -> list[tf.Tensor]:
    """The chief's ``values`` on every worker (one-off)."""
    return FromChief(strategy)([tf.convert_to_tensor(v) for v in values])


def sync_variables_from_chief(distribution: Distribution, variables: list[tf.Variable]) -> None:
    """Give every worker the chief's values of ``variables`` (after the chief alone restored them)."""
    if distribution.num_workers == 1 or not variables:
        return
    values = broadcast_from_chief(distribution.strategy, [tf.convert_to_tensor(v) for v in variables])
    for variable, value in zip(variables, values):
        variable.assign(value)
