"""The LRPO release's models as first-class policies (issue 24 items 3, 4 and 6).

On tiny stand-ins of the published files (lrpo.standins, written once for the module into a temp
folder): the ControlNet loader accepts exactly the forms the reference's inference accepts and
refuses others by name; `--policy lrpo-fidelity` restores, evaluates and starts `lrpo train`; its
sampling makes the calls of the reference's ``v1_refl`` path; ``--precision`` is honoured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from tests.conftest import single_thread, write_tiny_faces
from lrpo import weights
from lrpo.cli import main
from lrpo.config import ConfigError
from lrpo.eval.evaluate import MethodSpec
from lrpo.inference.restorer import Restorer
from lrpo.policies.loading import load_policy
from lrpo.policies import build_policy_from_dict
from lrpo.policies import sd_loaders as L
from lrpo.policies.colorfix import wavelet_color_fix
from lrpo.policies.published import published_policies, published_policy_config
from lrpo.model_files import CheckpointFormatError
from lrpo.standins import write_standins

pytest.importorskip("diffusers")

REPO = Path(__file__).resolve().parents[2]
FILES = ("sd21-base", "diffbir-swinir-face", "diffbir-v1-face", "lrpo-fidelity", "lrpo-perception")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("published")
    write_standins(folder, "tiny", only=FILES)
    return folder


@pytest.fixture
def registry(tiny, monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("LRPO_WEIGHTS", str(tiny))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    return tiny


def _yaml_at(tmp_path: Path, name: str, resolution: int = 64, **policy) -> Path:
    """The shipped policy YAML, unchanged but for the face size of the tiny files (and ``policy``)."""
    raw = yaml.safe_load(published_policy_config(name).read_text())
    raw["policy"].update(resolution=resolution, **policy)
    path = tmp_path / f"policy-{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _controlnet_file_sd(tiny: Path, name: str = "lrpo-fidelity") -> dict[str, torch.Tensor]:
    return torch.load(tiny / weights.get_entry(name).filename, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------
# names, registry
# ----------------------------------------------------------------------------------------------
def test_published_names_and_weights_list(capsys):
    assert {"lrpo-fidelity", "lrpo-perception", "sd21-diffbir"} <= set(published_policies())
    for name in ("lrpo-fidelity", "lrpo-perception"):
        raw = yaml.safe_load(published_policy_config(name).read_text())
        # the release's inference (SPEC section 8): 50 DDIM steps, eta 0.8, bf16, colour fix
        assert raw["diffusion"]["sample_steps"] == 50 and raw["diffusion"]["eta"] == 0.8
        assert raw["policy"]["controlnet_checkpoint"] == f"registry:{name}" and raw["policy"]["controlnet_format"] == "reference"
        assert raw["policy"]["precision"] == "bf16" and raw["policy"]["color_fix"] == "wavelet"
    with pytest.raises(ConfigError, match=r"--policy 'lrpo-fidel' is not known; known: .*lrpo-fidelity"):
        published_policy_config("lrpo-fidel")
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("lrpo-fidelity", "lrpo-perception"):
        row = next(line for line in lines if line.split()[:1] == [name])
        assert "wubin1928/BFR_RL" in " ".join(lines[lines.index(row):lines.index(row) + 3]), row


# ----------------------------------------------------------------------------------------------
# the loader: the reference's forms, strictly keyed; others refused by name
# ----------------------------------------------------------------------------------------------
def test_reference_forms_load_the_same_weights(tiny, tmp_path):
    sd = _controlnet_file_sd(tiny)
    forms = {
        "plain.pth": sd,
        "wrapped.pth": {"state_dict": sd, "epoch": 3},  # the reference reads sd["state_dict"] only
        "module.pth": {f"module.{k}": v for k, v in sd.items()},
        "both.pth": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        got = L.read_reference_controlnet(tmp_path / name)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd), name


@pytest.mark.parametrize("obj, says", [
    (lambda sd: {f"controlnet.{k}": v for k, v in sd.items()}, "keys under 'controlnet.' (lrpo's own training save"),
    (lambda sd: {f"control_model.{k}": v for k, v in sd.items()}, "keys under 'control_model.' (ControlNet's training save"),
    (lambda sd: {**{f"module.{k}": v for k, v in list(sd.items())[:3]}, **dict(list(sd.items())[3:])}, "3 of"),
    (lambda sd: {"model": sd, "optimizer": {}}, "a dict of other entries (model, optimizer)"),
    (lambda sd: {**sd, "step": 5}, "non-tensor entries step"),
    (lambda sd: {"state_dict": [1, 2]}, "its 'state_dict' entry is a list"),
    (lambda sd: list(sd.values()), "the file holds a list"),
    (lambda sd: {}, "the state dict is empty"),
])
def test_other_forms_are_refused_by_name(tiny, tmp_path, obj, says):
    path = tmp_path / "other.pth"
    torch.save(obj(_controlnet_file_sd(tiny)), path)
    with pytest.raises(CheckpointFormatError) as err:
        L.read_reference_controlnet(path)
    msg = str(err.value)
    assert says in msg and str(path) in msg and "expected what the reference's inference loads" in msg and "\n" not in msg


def test_safetensors_and_pickles_are_refused_without_unpickling(tiny, tmp_path):
    sd = _controlnet_file_sd(tiny)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "cn.safetensors")
    with pytest.raises(CheckpointFormatError, match="a safetensors file; the reference's inference reads torch.save files only"):
        L.read_reference_controlnet(tmp_path / "cn.safetensors")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": sd, "hook": Payload()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointFormatError, match=r"could not read .*pickled\.pth as a torch.save file of tensors \(weights_only\)"):
        L.read_reference_controlnet(tmp_path / "pickled.pth")
    assert not marker.exists()


def test_policy_loads_strictly_keyed(registry, tmp_path):
    sd = _controlnet_file_sd(registry)
    policy = build_policy_from_dict(yaml.safe_load(_yaml_at(tmp_path, "lrpo-fidelity").read_text())["policy"])
    # every file entry is in the ControlNet, by the LDM name map (what the reference's strict load needs)
    mapped = L.to_original_layout(policy.controlnet.state_dict(), L.unet_key_map(policy.controlnet.state_dict(), 1))
    assert mapped.keys() == sd.keys() and all(torch.equal(mapped[k].float(), sd[k].float()) for k in sd)
    key = "zero_convs.0.0.weight"
    for name, bad, says in (("missing.pth", {k: v for k, v in sd.items() if k != key}, f"missing keys (1): {key}"),
                            ("extra.pth", {**sd, "extra.weight": torch.zeros(1)}, "unexpected keys (1): extra.weight")):
        torch.save(bad, tmp_path / name)
        raw = yaml.safe_load(_yaml_at(tmp_path, "lrpo-fidelity", controlnet_checkpoint=str(tmp_path / name)).read_text())
        with pytest.raises(L.WeightsMismatchError) as err:
            build_policy_from_dict(raw["policy"])
        assert f"{name} does not match ConcatControlNet" in str(err.value) and says in str(err.value), str(err.value)


# ----------------------------------------------------------------------------------------------
# the reference's inference (diffbir/inference/loop.py --version v1_refl), call by call
# ----------------------------------------------------------------------------------------------
def test_sampling_makes_the_reference_calls(registry, tmp_path):
    restorer = Restorer.from_checkpoint(_yaml_at(tmp_path, "lrpo-fidelity"), steps=None, eta=None, device="cpu", precision="bf16")
    policy, sampler = restorer.policy, restorer.sampler
    # steps 50, "uniform" spacing with the +1 offset: step_ratio = 1000 // 50 = 20, t_i = (49 - i) * 20 + 1,
    # so 981, 961, ..., 21, 1 (SPEC section 2); eta 0.8 (the release's inference)
    assert sampler.timesteps.tolist() == [(49 - i) * 20 + 1 for i in range(50)] and sampler.eta == 0.8
    calls = []
    forward, unet_forward = policy.forward, policy.unet.forward

    def spy(x_t, t, cond):
        calls.append(dict(batch=x_t.shape[0], t=t.flatten().unique().tolist(), cond=cond.clone(),
                          autocast=torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        return forward(x_t, t, cond)

    def unet_spy(*args, encoder_hidden_states=None, **kw):
        calls[-1]["context"] = encoder_hidden_states.detach().clone()
        return unet_forward(*args, encoder_hidden_states=encoder_hidden_states, **kw)

    policy.forward, policy.unet.forward = spy, unet_spy
    face = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    out = restorer.restore([face], [7])[0]
    # cfg 1.0: one conditional pass per step (batch 1, never 2), at the 50 timesteps in order
    assert [c["batch"] for c in calls] == [1] * 50 and [c["t"][0] for c in calls] == sampler.timesteps.tolist()
    # the empty prompt: the context is the text tower's output on "" for every call
    assert all(torch.equal(c["context"].float(), policy.empty_context.expand(1, -1, -1).float()) for c in calls)
    # stage 1: the condition is the VAE latent of SwinIR(LQ resized to R), the same at every step
    # (the LQ brought to R as DiffBIR's resize_short_edge_to: bicubic with antialias=True, also when upscaling)
    lq = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255
    lq = torch.nn.functional.interpolate(lq, size=(64, 64), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    s1 = policy.stage1_image(lq)
    torch.testing.assert_close(calls[0]["cond"], policy.vae_encode(s1), rtol=0, atol=0)
    assert all(torch.equal(c["cond"], calls[0]["cond"]) for c in calls)
    # bf16: every network call under bf16 autocast, the frozen UNet stored in bf16
    assert all(c["autocast"] for c in calls) and policy.unet.conv_in.weight.dtype == torch.bfloat16
    # colour fix as the reference's pipeline applies it: wavelet_reconstruction((decoded + 1) / 2, stage-1
    # image) on the decoder's output before any clamp, then the resize to the input's size (bicubic,
    # antialias=True), then [0, 1]; the reference truncates to uint8 where we round (at most 1/255 apart)
    policy.forward = forward
    from lrpo.policies.sampling import sample_generators, sample_trajectories

    x0 = sample_trajectories(policy, sampler, policy.vae_encode(s1), sample_generators([7]), record=False, precision="bf16").sample
    decoded = policy.decode(x0, None, clamp=False)
    assert decoded.min() < 0 or decoded.max() > 1  # the random stand-in overshoots: clamping first would differ
    want = wavelet_color_fix(decoded, s1).clamp(0, 1)
    got = torch.from_numpy(out).permute(2, 0, 1).float() / 255
    want = torch.nn.functional.interpolate(want, size=(48, 48), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    assert (got - want).abs().max() <= 0.5 / 255 + 1e-5  # the same image, rounded to uint8
    clamped_first = wavelet_color_fix(decoded.clamp(0, 1), s1).clamp(0, 1)
    assert (torch.nn.functional.interpolate(clamped_first, size=(48, 48), mode="bicubic", antialias=True)[0].clamp(0, 1)
            - got).abs().max() > 2 / 255


@pytest.mark.parametrize("precision, dtype, autocast", [("fp32", torch.float32, False), ("bf16", torch.bfloat16, True)])
def test_precision_is_honoured(registry, tmp_path, precision, dtype, autocast):
    # the YAML says bf16; --precision fp32 must run in fp32 (it silently ran in bf16 before)
    restorer = Restorer.from_checkpoint(_yaml_at(tmp_path, "sd21-diffbir"), steps=2, eta=0.0, device="cpu", precision=precision)
    policy = restorer.policy
    assert policy.cfg.precision == precision and policy.unet.conv_in.weight.dtype == dtype
    seen, forward = [], policy.unet.forward
    policy.unet.forward = lambda *a, **k: (seen.append(torch.is_autocast_enabled("cpu")), forward(*a, **k))[1]
    restorer.restore([np.full((32, 32, 3), 128, np.uint8)], [0])
    assert seen == [autocast] * 2


# ----------------------------------------------------------------------------------------------
# the commands
# ----------------------------------------------------------------------------------------------
def test_restore_cli_with_policy_lrpo_fidelity(registry, tmp_path, capsys):
    face = tmp_path / "in" / "face.png"
    write_tiny_faces(face.parent, count=1, size=48)
    rc = main(["restore", str(face.parent), str(tmp_path / "out"), "--policy", "lrpo-fidelity", "--aligned", "--steps", "2",
               "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr()
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["face_00.png"]


def test_evaluate_method_policy_kind(registry):
    spec = MethodSpec.parse("ours=policy:lrpo-perception#eta=0.8")
    assert spec.kind == "checkpoint" and Path(spec.path) == published_policy_config("lrpo-perception") and spec.eta == 0.8
    assert MethodSpec.parse("policy:lrpo-fidelity").name == "lrpo-fidelity"
    with pytest.raises(ConfigError, match="--policy 'nope' is not known"):
        MethodSpec.parse("x=policy:nope")


def test_fidelity_and_perception_are_different_models(registry, tmp_path):
    lq = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = {}
    for name in ("lrpo-fidelity", "lrpo-perception"):
        policy, diffusion, _ = load_policy(_yaml_at(tmp_path, name), "cpu", precision="fp32")
        eps[name] = policy(x_t, torch.tensor([981]), policy.condition(lq))
    assert not torch.allclose(eps["lrpo-fidelity"], eps["lrpo-perception"])


def test_train_continues_the_published_model(registry, tmp_path, capsys):
    faces = tmp_path / "faces"
    write_tiny_faces(faces, count=3, size=64)
    init = _yaml_at(tmp_path, "lrpo-fidelity")
    rc = main(["train", "--no-progress", f"init_checkpoint={init}", f"data.hq={faces}", "data.resolution=64", "data.val_count=1",
               f"out_dir={tmp_path / 'run'}", "device=cpu", "epochs=1", "group_size=2", "groups_per_epoch=1",
               "rollout_groups_per_batch=1", "sample_steps=2", "train_fraction=1.0", "minibatch_size=2", "timesteps_per_forward=2",
               "reg_weight=0", "reward.preset=", 'reward.terms={"brightness": {"weight": 1.0}}'])
    assert rc == 0, capsys.readouterr().err
    # the continued model restores like any run, on top of the same published files
    policy, _, _ = load_policy(tmp_path / "run", "cpu")
    assert policy.cfg.controlnet_format == "reference"
    assert policy.cfg.controlnet_checkpoint == str(registry / "lrpo_fidelity.pth")


# ----------------------------------------------------------------------------------------------
# bench/published_models.py: the comparison in one command
# ----------------------------------------------------------------------------------------------
def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("published_models", REPO / "bench" / "published_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_tiny_compares_the_three_models_on_named_sets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "unused"))  # the bench points it at its stand-ins; restored after
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    assert _bench().main(["--tiny", "--table", "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(doc["sets"]) == {"celeba-test", "lfw-test"}
    for s in doc["sets"].values():
        assert set(s["summary"]) == {"input", "lrpo-fidelity", "lrpo-perception", "sd21-diffbir"}
    table = (tmp_path / "out" / "table.md").read_text()
    assert all(f"| {m} |" in table for m in ("lrpo-fidelity", "lrpo-perception", "sd21-diffbir"))


def test_bench_runs_the_release_settings_and_names_missing_files(tmp_path, monkeypatch, capsys):
    bench = _bench()
    argv = bench.evaluate_argv(["celeba-test=D"], {"lrpo-fidelity": "policy:lrpo-fidelity"}, "OUT", steps=50, eta=0.8, seed=0,
                               precision="auto", device="auto", table=True, extra=["--limit", "4"])
    assert argv == ["evaluate", "--set", "celeba-test=D", "--method", "lrpo-fidelity=policy:lrpo-fidelity#steps=50,eta=0.8",
                    "--seed", "0", "--precision", "auto", "--device", "auto", "--out", "OUT", "--table", "--limit", "4"]
    assert MethodSpec.parse(argv[4]).steps == 50 and MethodSpec.parse(argv[4]).eta == 0.8
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert bench.main(["--set", f"celeba-test={tmp_path}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("published_models: model files missing: sd21-base, lrpo-fidelity, diffbir-swinir-face, lrpo-perception, "
                   "diffbir-v1-face; fetch them with `lrpo weights fetch sd21-base lrpo-fidelity diffbir-swinir-face "
                   "lrpo-perception diffbir-v1-face` (or put them on $LRPO_WEIGHTS); nothing was run")
    assert not (tmp_path / "out").exists()


def test_gpu_check_phase_times_the_published_restore_or_says_why_not(registry, tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.published_restore("cpu") == {"status": "skipped: no CUDA device (the figure is per face on one GPU)"}
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert gpu_check.published_restore("cpu", require_full=False)["status"] == (
        "skipped: the published files are not on this machine (sd21-base, lrpo-fidelity, diffbir-swinir-face; "
        "`lrpo weights fetch --all-for restore` or $LRPO_WEIGHTS)")
    monkeypatch.setenv("LRPO_WEIGHTS", str(registry))
    # the code path of the GPU run on the tiny stand-ins: the shipped YAML at 512, 2 steps, one timed face
    got = gpu_check.published_restore("cpu", faces=1, steps=2, require_full=False)
    assert got["status"] == "done" and got["timed_faces"] == 1 and got["seconds_per_face"] > 0, got
    assert (got["resolution"], got["steps"], got["eta"], got["precision"]) == (512, 2, 0.8, "bf16")


def test_demo_serves_the_published_model_in_the_precision_asked(registry, tmp_path, capsys):
    from lrpo.demo.service import DemoService

    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        service = DemoService(_yaml_at(tmp_path, "lrpo-fidelity"), device="cpu", precision=precision,
                              detector_path=str(tmp_path / "no_detector"), reward_names=[])
        assert service.policy.cfg.controlnet_format == "reference" and service.policy.unet.conv_in.weight.dtype == dtype
    assert main(["demo", "--policy", "lrpo"]) == 2
    assert "--policy 'lrpo' is not known; known: lrpo-fidelity, lrpo-perception" in capsys.readouterr().err


def test_real_size_standins_of_the_lrpo_files_have_the_published_layout():
    import math

    from lrpo.standins import STANDINS, controlnet_layout, sd21_archs

    unet, vae, _ = sd21_archs("real")
    layout = controlnet_layout(unet, vae.latent_channels)
    params = sum(math.prod(e.shape) for e in layout.values())
    # DiffBIR v1 face's ControlNet, which LRPO fine-tunes: 363 M parameters, all fp32 = 1.45 GB
    assert 360e6 < params < 366e6 and {e.dtype for e in layout.values()} == {torch.float32}
    for name in ("lrpo-fidelity", "lrpo-perception"):
        entry = weights.get_entry(name)
        assert name in STANDINS and entry.min_mb <= params * 4 / 1e6 <= entry.max_mb
    assert layout.keys() >= {"input_blocks.0.0.weight", "zero_convs.11.0.weight", "middle_block_out.0.weight"}
    assert tuple(layout["input_blocks.0.0.weight"].shape) == (320, 8, 3, 3)  # noisy latent + condition latent
