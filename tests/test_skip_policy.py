"""The skip policy of tests/conftest.py, run on tiny inner test files: a missing extra fails the run, a GPU or
platform skip does not."""

import pytest

pytest_plugins = ["pytester"]

# the inner run gets exactly the suite's hooks, not its fixtures
POLICY = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n"


@pytest.fixture
def inner(pytester):
    pytester.makeconftest(POLICY)
    return pytester


def test_module_level_importorskip_of_a_missing_extra_fails_the_run(inner):
    inner.makepyfile(test_extra="""
        import pytest
        pytest.importorskip("wanrt_no_such_extra")

        def test_x():
            pass
    """)
    result = inner.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*test_extra.py skipped for a reason the suite does not allow*wanrt_no_such_extra*"])


def test_a_skip_inside_a_test_for_anything_else_fails_that_test(inner):
    inner.makepyfile(test_inner="""
        import pytest

        def test_needs_weights():
            pytest.skip("weights not fetched")

        @pytest.mark.xfail(reason="known")
        def test_known():
            assert False
    """)
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, xfailed=1)  # an xfail is not a skip
    result.stdout.fnmatch_lines(["*test_inner.py::test_needs_weights skipped for a reason*weights not fetched*"])


def test_gpu_and_platform_skips_pass(inner):
    inner.makepyfile(test_inner="""
        import pytest

        pytestmark = pytest.mark.skipif(True, reason="needs an NVIDIA GPU (torch.cuda)")

        def test_gpu():
            pass
    """, test_platform="""
        import pytest

        def test_mount():
            pytest.skip("platform: cannot mount a tmpfs here (not root)")

        @pytest.mark.skipif(True, reason="needs a machine without a GPU (the CPU-only builder)")
        def test_cpu_only():
            pass
    """)
    result = inner.runpytest("-p", "no:cacheprovider")
    assert result.ret == 0
    result.assert_outcomes(skipped=3)
