"""The tampering fixtures of the hostile tests, shared by the tests of each mechanism."""

from tests.test_hostile import ckpt, export, loaded, no_sampling, pristine  # noqa: F401
