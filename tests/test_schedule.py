"""Schedules (runtime/schedule.py): the rules, the scheduler that runs them, and what diffusers' Wan pipeline does
with them: transformer calls counted at the backend, with their batch and the timesteps they were given."""

import math

import pytest
from click.testing import CliRunner

from wanrt.errors import BadInputError
from wanrt.runtime.schedule import RECIPES, Schedule, resolve_schedule


def _resolve(**kw):
    return resolve_schedule(default_steps=2, default_guidance=5.0, **kw)


def _shifted(t: float, shift: float) -> float:
    """The timestep a flow scheduler makes of an unshifted one: sigma' = shift s / (1 + (shift - 1) s)."""
    s = t / 1000
    return 1000 * shift * s / (1 + (shift - 1) * s)


# ------------------------------------------------------------------------------------------------ the rules
def test_recipe_is_four_steps_without_cfg_at_lightx2v_timesteps():
    s = _resolve(recipe_name="distill-4step")
    assert (s.steps, s.guidance, s.timesteps, s.shift) == (4, 1.0, (1000.0, 750.0, 500.0, 250.0), 5.0)
    assert not s.cfg and s.forwards == 4 and s.sigmas == [1.0, 0.75, 0.5, 0.25]
    slow = RECIPES["wan-40step-cfg"].schedule()
    assert slow.cfg and slow.forwards == 80 and slow.timesteps is None
    # given values win over the recipe's; the default is what generate always ran
    assert _resolve(recipe_name="distill-4step", shift=3.0).shift == 3.0
    assert _resolve() == Schedule(steps=2, guidance=5.0) and _resolve().forwards == 4
    assert _resolve(no_cfg=True).guidance == 1.0 and _resolve(guidance=0.5).forwards == 2  # <= 1: no CFG
    assert _resolve(timesteps="900, 400").steps == 2  # the list sets the step count


@pytest.mark.parametrize("kw, param, text", [
    ({"recipe_name": "distill-4step", "steps": 8}, "steps",
     "--steps 8 disagrees with --timesteps (recipe distill-4step) 1000,750,500,250 (4 values)"),
    ({"timesteps": "1000,500", "steps": 3}, "steps", "--steps 3 disagrees with --timesteps 1000,500 (2 values)"),
    ({"timesteps": "1000,500,600"}, "timesteps", "must be strictly decreasing (600 after 500)"),
    ({"timesteps": "1000,1000"}, "timesteps", "strictly decreasing"),
    ({"timesteps": "1200,500"}, "timesteps", "1200.0 is outside (0, 1000]"),
    ({"timesteps": "500,0"}, "timesteps", "0.0 is outside (0, 1000]"),
    ({"timesteps": "500,nan"}, "timesteps", "outside"),
    ({"timesteps": "a,b"}, "timesteps", "'a' is not a number"),
    ({"timesteps": ","}, "timesteps", "is empty"),
    ({"shift": 0.0}, "shift", "above 0"), ({"shift": math.inf}, "shift", "above 0"),
    ({"guidance": math.nan}, "guidance", "finite"),
    ({"no_cfg": True, "guidance": 5.0}, "guidance", "--no-cfg disagrees with --guidance 5"),
    ({"recipe_name": "fast"}, "recipe", "choose from distill-4step, wan-40step-cfg"),
    ({"steps": 0}, "steps", "at least 1"),
])
def test_refusals_are_one_line_naming_the_field(kw, param, text):
    with pytest.raises(BadInputError) as e:
        _resolve(prefix="--", **kw)
    assert e.value.param == param and text in str(e.value) and "\n" not in str(e.value)


def test_a_server_bounds_the_list_before_reading_it():
    with pytest.raises(BadInputError, match="timesteps has 60 values; the limit is 50") as e:
        _resolve(timesteps=list(range(60, 0, -1)), max_steps=50)
    assert e.value.param == "timesteps"
    with pytest.raises(BadInputError, match="steps 51 is over this server's limit 50"):
        _resolve(steps=51, max_steps=50)
    assert _resolve(timesteps=[1000, 500.5], max_steps=50).timesteps == (1000.0, 500.5)  # JSON numbers
    with pytest.raises(BadInputError, match="not a number"):
        _resolve(timesteps=[1000, True])


# ------------------------------------------------------------------------------------------------ the scheduler
@pytest.mark.parametrize("kind", ["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_scheduler_runs_the_schedule_shifted(kind):
    import diffusers

    from wanrt.runtime.pipeline import scheduled

    if kind == "UniPCMultistepScheduler":  # the tiny pipeline's (Wan 2.1's): flow sigmas, shift 3
        base = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 num_train_timesteps=1000, flow_shift=3.0)
    else:
        base = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert scheduled(base, Schedule(steps=2, guidance=5.0)) is base  # nothing asked: the pipeline's own
    s = _resolve(recipe_name="distill-4step")
    copy = scheduled(base, s)
    copy.set_timesteps(4)  # what WanImageToVideoPipeline calls
    ran = [float(t) for t in copy.timesteps]
    want = [_shifted(t, 5.0) for t in s.timesteps]  # 1000, 937.5, 833.3, 625
    # UniPC hands the model integer timesteps (int64) and nudges sigma 1 down by 1e-6; FlowMatch keeps floats
    assert all(abs(r - w) <= 1 for r, w in zip(ran, want)), (ran, want)
    assert len(ran) == 4 and base.config.get("flow_shift", base.config.get("shift")) == 3.0  # base untouched
    # an uneven list at shift 1 comes back as given (the recipe's list is close to UniPC's own 4-step spacing)
    copy = scheduled(base, Schedule(steps=3, guidance=1.0, timesteps=(1000, 900, 300), shift=1.0))
    copy.set_timesteps(3)
    assert [abs(float(t) - w) <= 1 for t, w in zip(copy.timesteps, (1000, 900, 300))] == [True] * 3
    with pytest.raises(BadInputError, match="has no fixed flow shift"):
        scheduled(diffusers.DDIMScheduler(), s)
    dpm = diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    assert scheduled(dpm, Schedule(steps=2, guidance=1.0, shift=5.0)).config.flow_shift == 5.0
    with pytest.raises(BadInputError, match="takes no explicit sigmas"):  # one line, not a TypeError mid-run
        scheduled(dpm, s)


def test_a_schedule_the_scheduler_rounds_to_a_repeated_timestep_is_refused_before_the_run():
    """UniPC keeps integer timesteps: at shift 3, 334 steps start 999, 999 and its last step fails an assertion
    after the whole run (a server job then ended as an internal error). 333 steps are distinct and pass."""
    import diffusers

    from wanrt.runtime.pipeline import scheduled

    base = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             num_train_timesteps=1000, flow_shift=3.0)
    assert scheduled(base, Schedule(steps=333, guidance=1.0)) is base
    with pytest.raises(BadInputError, match=r"steps \(334 steps\).*repeated timestep \(999\); use fewer") as e:
        scheduled(base, Schedule(steps=334, guidance=1.0))
    assert e.value.param == "steps"
    with pytest.raises(BadInputError, match="shift 5.*space them further apart") as e:
        scheduled(base, Schedule(steps=2, guidance=1.0, timesteps=(1000, 999.9), shift=5.0))
    assert e.value.param == "timesteps"


# ------------------------------------------------------------------------------------------------ the pipeline
class CountingBackend:
    """The real eager tiny backend, each forward recorded: (batch, timesteps, text) as the pipeline passed them."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def forward(self, latents, timestep, text, image):
        self.calls.append((latents.shape[0], [float(t) for t in timestep], text.clone()))
        return self.backend.forward(latents, timestep, text, image)


@pytest.fixture(scope="module")
def counted():
    from wanrt.export.model import ModelSpec
    from wanrt.runtime import backends as B
    from wanrt.runtime.pipeline import build_pipeline

    backend = CountingBackend(B.backend_from_specs("eager", ModelSpec("tiny"), None))
    return backend, build_pipeline(backend, seed=0)


def _generate(counted, schedule):
    from PIL import Image

    from wanrt.runtime.generate import GenerateSpec, generate_video

    backend, pipe = counted
    backend.calls.clear()
    spec = GenerateSpec(prompt="a cat", negative_prompt="blurry", frames=5, height=32, width=32, schedule=schedule)
    frames, info = generate_video(backend, Image.new("RGB", (32, 32), (90, 60, 30)), spec, pipe=pipe)
    assert frames.shape == (5, 32, 32, 3)
    return info


def test_distill_recipe_runs_four_forwards_at_batch_one(counted):
    info = _generate(counted, _resolve(recipe_name="distill-4step"))
    backend, pipe = counted
    assert info["dit_calls"] == 4 and len(backend.calls) == 4
    assert all(batch == 1 for batch, _, _ in backend.calls)
    seen = [ts[0] for _, ts, _ in backend.calls]
    assert info["timesteps"] == seen  # what the scheduler ran is what the transformer was given
    assert all(abs(t - w) <= 1 for t, w in zip(seen, [_shifted(t, 5.0) for t in (1000, 750, 500, 250)]))
    text = backend.calls[0][2]
    assert all(c[2].equal(text) for c in backend.calls)  # the prompt every time: no unconditional pass
    assert pipe.scheduler.config.flow_shift == 3.0  # the cached pipeline's own scheduler is back


def test_cfg_is_two_separate_batch_one_forwards_a_step(counted):
    """diffusers' Wan I2V pipeline does not batch CFG: conditional then unconditional, each at batch 1 (what the
    bench's per-video seconds assume)."""
    info = _generate(counted, Schedule(steps=2, guidance=5.0))
    backend, _ = counted
    assert info["dit_calls"] == 4 and [c[0] for c in backend.calls] == [1, 1, 1, 1]
    (_, t0, cond), (_, t1, uncond) = backend.calls[:2]
    assert t0 == t1 and not cond.equal(uncond)  # one step: same timestep, prompt then negative prompt
    assert info["timesteps"] == [backend.calls[0][1][0], backend.calls[2][1][0]]
    # guidance 1: one forward a step, at the explicit timesteps
    info = _generate(counted, _resolve(timesteps="1000,900,300", shift=1.0, guidance=1.0))
    assert info["dit_calls"] == 3 and [c[0] for c in backend.calls] == [1, 1, 1]
    assert [c[1][0] for c in backend.calls] == info["timesteps"] == [999.0, 900.0, 300.0]  # UniPC: int, 1 - 1e-6


def test_generate_refuses_a_bad_schedule_in_one_line_before_any_work(tmp_path):
    from wanrt.commands.main import cli

    out = tmp_path / "v.mp4"
    res = CliRunner().invoke(cli, ["generate", "--image", str(tmp_path / "missing.png"), "--prompt", "a cat",
                                   "--recipe", "distill-4step", "--steps", "8", "-o", str(out)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "--steps 8 disagrees with --timesteps (recipe distill-4step)" in lines[0]  # before the image is read
    assert not out.exists()
