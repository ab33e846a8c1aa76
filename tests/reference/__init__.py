"""Independent NumPy forwards of official networks, used as references by the tests."""
