"""Typed configuration (lrpo.config): defaults, YAML + overrides, type errors, validation, round trips."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

import lrpo
from lrpo.config import (
    DEGRADATION_PRESETS,
    ConfigError,
    DataConfig,
    DegradationConfig,
    DiffusionConfig,
    OptimConfig,
    PolicyConfig,
    PretrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)

PACKAGE_CONFIGS = Path(lrpo.__file__).parent / "configs"
REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# defaults and shipped presets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DegradationConfig, DataConfig, PolicyConfig, DiffusionConfig, OptimConfig, PretrainConfig])
def test_defaults_validate(cls):
    cls().validate()


@pytest.mark.parametrize("name", sorted(DEGRADATION_PRESETS))
def test_degradation_presets_validate(name):
    DEGRADATION_PRESETS[name].validate()


def test_default_degradation_ranges_are_the_spec_ones():
    cfg = DegradationConfig()
    assert cfg.kernel_size == 41
    assert cfg.blur_sigma == (0.1, 12.0)
    assert cfg.rotation == (-math.pi, math.pi)
    assert cfg.downscale == (1.0, 12.0)
    assert cfg.noise_sigma == (0.0, 15.0)
    assert cfg.jpeg_quality == (30, 99)


def _shipped_yamls() -> list[Path]:
    return sorted(PACKAGE_CONFIGS.glob("*.yaml")) + sorted(REPO_CONFIGS.glob("*.yaml"))


def _config_class(path: Path) -> type:
    """Pretraining and LRPO presets share the folder; each file's top-level keys say which it is."""
    from lrpo.rl.config import LRPOConfig

    keys = set(yaml.safe_load(path.read_text()) or {})
    pretrain = {f.name for f in dataclasses.fields(PretrainConfig)}
    lrpo_keys = {f.name for f in dataclasses.fields(LRPOConfig)}
    fits = [cls for cls, names in ((PretrainConfig, pretrain), (LRPOConfig, lrpo_keys)) if keys <= names]
    assert len(fits) == 1, f"{path}: its keys fit {len(fits)} config classes"
    return fits[0]


def test_there_are_shipped_pretrain_configs():
    names = {f.name for f in _shipped_yamls() if not _is_policy_file(f) and _config_class(f) is PretrainConfig}
    assert {"cpu-quickstart.yaml", "pixel-64.yaml", "pixel-512.yaml"} <= names


def _is_policy_file(path) -> bool:
    """Policy YAMLs (configs/policy-*.yaml) describe a model: `policy` and `diffusion` sections."""
    return set(yaml.safe_load(path.read_text()) or {}) == {"policy", "diffusion"}


@pytest.mark.parametrize("path", [p for p in _shipped_yamls() if _is_policy_file(p)], ids=lambda p: p.name)
def test_every_shipped_policy_file_validates(path):
    from lrpo.config import DiffusionConfig, from_dict
    from lrpo.policies.latent_config import LatentPolicyConfig

    raw = yaml.safe_load(path.read_text())
    assert raw["policy"]["kind"] == "sd21_controlnet"
    cfg = from_dict(LatentPolicyConfig, raw["policy"], prefix="policy")
    cfg.validate()
    assert to_dict(cfg)["sd_checkpoint"] == raw["policy"]["sd_checkpoint"]
    from_dict(DiffusionConfig, raw["diffusion"], prefix="diffusion").validate()


@pytest.mark.parametrize("path", [p for p in _shipped_yamls() if not _is_policy_file(p)], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads_and_validates(path):
    cls = _config_class(path)
    # an LRPO preset names no starting checkpoint: that comes from the command line
    cfg = load_config(cls, path, [] if cls is PretrainConfig else ["init_checkpoint=runs/pretrain"])
    # every key written in the file made it into the dataclass (nothing silently defaulted)
    written = yaml.safe_load(path.read_text())
    loaded = to_dict(cfg)
    for section, value in written.items():
        if isinstance(value, dict):
            for key, v in value.items():
                assert loaded[section][key] == v, f"{path}: {section}.{key}"
        else:
            assert loaded[section] == value, f"{path}: {section}"


# ---------------------------------------------------------------------------------------------
# YAML + overrides
# ---------------------------------------------------------------------------------------------
def test_yaml_then_overrides(tmp_path):
    path = _write(
        tmp_path,
        "steps: 10\nbatch_size: 4\npolicy:\n  base_channels: 16\n  channel_mults: [1, 2]\noptim:\n  lr: 0.5\n",
    )
    cfg = load_config(PretrainConfig, path, ["optim.lr=1e-4", "steps=7", "degradation.downscale=[1,4]", "data.hq=/x/y"])
    assert cfg.steps == 7  # override beats the file
    assert cfg.batch_size == 4  # file beats the default
    assert cfg.policy.base_channels == 16
    # YAML 1.1 reads "1e-4" (no dot) as a string; the float field still gets a float
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1e-4
    # lists become tuples, ints in a float tuple become floats
    assert cfg.policy.channel_mults == (1, 2)
    assert cfg.degradation.downscale == (1.0, 4.0) and all(isinstance(v, float) for v in cfg.degradation.downscale)
    assert cfg.data.hq == "/x/y"
    # untouched sections keep their defaults
    assert cfg.diffusion == DiffusionConfig()


def test_override_value_types():
    cfg = load_config(
        PretrainConfig,
        None,
        ["data.skip_bad=true", "policy.attention_levels=[1]", "policy.prediction=eps", "time_budget_min=2", "optim.betas=[0.9,1e-3]"],
    )
    assert cfg.data.skip_bad is True
    assert cfg.policy.attention_levels == (1,)
    assert cfg.policy.prediction == "eps"
    assert isinstance(cfg.time_budget_min, float) and cfg.time_budget_min == 2.0  # int accepted for a float
    assert cfg.optim.betas == (0.9, 1e-3)


def test_apply_overrides_creates_sections_and_keeps_the_rest():
    data = {"policy": {"base_channels": 16}}
    apply_overrides(data, ["policy.stage1=none", "optim.lr=3e-4", "seed=5"])
    assert data == {"policy": {"base_channels": 16, "stage1": "none"}, "optim": {"lr": "3e-4"}, "seed": 5}


@pytest.mark.parametrize("bad", ["steps", "=3", "steps=[1,"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="override"):
        apply_overrides({}, [bad])


def test_override_below_a_leaf_is_an_error():
    with pytest.raises(ConfigError, match="'steps' is not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(PretrainConfig, _write(tmp_path, "# nothing\n")) == PretrainConfig()


def test_empty_yaml_section_gives_that_sections_defaults(tmp_path):
    # "policy:" with nothing under it is YAML null; it means "defaults", like an absent section
    cfg = load_config(PretrainConfig, _write(tmp_path, "policy:\nsteps: 3\n"), ["policy.base_channels=16"])
    assert cfg.steps == 3 and cfg.policy.base_channels == 16
    assert load_config(PretrainConfig, _write(tmp_path, "optim:\n", "b.yaml")).optim == OptimConfig()


# ---------------------------------------------------------------------------------------------
# errors that name the key, the section and the file
# ---------------------------------------------------------------------------------------------
def test_unknown_top_level_key(tmp_path):
    # typed on the command line: said so, with the nearest key
    with pytest.raises(ConfigError, match=r"command-line override 'stepz=3': PretrainConfig has no key 'stepz' \(did you mean 'steps'\?\)"):
        load_config(PretrainConfig, None, ["stepz=3"])
    # in a file: the file is named, the expected keys are listed
    path = tmp_path / "c.yaml"
    path.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key\(s\) \['stepz'\] \(did you mean 'steps'\?\)") as info:
        load_config(PretrainConfig, path, [])
    assert "expected some of" in str(info.value)


@pytest.mark.parametrize(
    "cls, override, hint",
    [
        ("LRPOConfig", "clip=0.1", "did you mean 'clip_range'"),
        ("LRPOConfig", "optim.lr=5e-4", "did you mean 'lr'"),  # the README's pretrain key, typed for train
        ("PretrainConfig", "lr=1e-4", "did you mean 'optim.lr'"),
        ("LRPOConfig", "data.hqq=faces", "did you mean 'data.hq'"),
    ],
)
def test_override_typos_name_the_override_and_the_nearest_key(cls, override, hint):
    from lrpo.rl.config import LRPOConfig

    with pytest.raises(ConfigError) as info:
        load_config({"LRPOConfig": LRPOConfig, "PretrainConfig": PretrainConfig}[cls], "lrpo-cpu" if cls == "LRPOConfig" else None, [override])
    msg = str(info.value)
    assert msg.startswith(f"command-line override {override!r}") and hint in msg and "lrpo-cpu.yaml" not in msg


def test_shipped_presets_by_name_from_any_folder(tmp_path, monkeypatch):
    from lrpo.config import SHIPPED_CONFIG_DIR, find_config
    from lrpo.rl.config import LRPOConfig

    monkeypatch.chdir(tmp_path)
    assert find_config("lrpo-cpu") == SHIPPED_CONFIG_DIR / "lrpo-cpu.yaml"
    assert find_config("configs/lrpo-reference.yaml") == SHIPPED_CONFIG_DIR / "lrpo-reference.yaml"
    assert load_config(LRPOConfig, "lrpo-reference", ["init_checkpoint=x"]).group_size == 9
    (tmp_path / "lrpo-cpu.yaml").write_text("epochs: 3\n")  # a local file of that name wins
    assert find_config("lrpo-cpu.yaml") == Path("lrpo-cpu.yaml")
    with pytest.raises(ConfigError, match=r"config file not found: nope .*shipped preset: .*lrpo-cpu"):
        find_config("nope")


def test_unknown_key_names_the_section(tmp_path):
    path = _write(tmp_path, "policy:\n  base_chanels: 16\n")
    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, path)
    msg = str(info.value)
    assert "base_chanels" in msg and "section 'policy'" in msg and str(path) in msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("steps=ten", "steps"),
        ("steps=2.5", "steps"),
        ("policy.base_channels=true", "policy.base_channels"),
        ("data.skip_bad=3", "data.skip_bad"),
        ("optim.lr=fast", "optim.lr"),
        ("policy.prediction=noise", "policy.prediction"),
        ("degradation.downscale=[1,2,3]", "degradation.downscale"),
        ("degradation.downscale=4", "degradation.downscale"),
        ("policy.channel_mults=[1,x]", "policy.channel_mults[1]"),
        ("policy=3", "policy"),
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, None, [override])
    assert key in str(info.value)


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(PretrainConfig, missing)
    assert str(missing) in str(info.value)


def test_config_file_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(PretrainConfig, _write(tmp_path, "- 1\n- 2\n"))


def test_invalid_yaml_names_the_file(tmp_path):
    path = _write(tmp_path, "steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(PretrainConfig, path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# validate(): out-of-range values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, words",
    [
        ("degradation.kernel_size=40", "degradation.kernel_size"),
        ("degradation.kernel_size=0", "degradation.kernel_size"),
        ("degradation.isotropic_prob=1.5", "degradation.isotropic_prob"),
        ("degradation.blur_sigma=[3,1]", "degradation.blur_sigma: low 3.0 is above high 1.0"),
        ("degradation.blur_sigma=[0,1]", "degradation.blur_sigma"),
        ("degradation.downscale=[0.5,2]", "degradation.downscale"),
        ("degradation.noise_sigma=[-1,2]", "degradation.noise_sigma"),
        ("degradation.jpeg_quality=[90,30]", "degradation.jpeg_quality"),
        ("degradation.jpeg_quality=[30,101]", "degradation.jpeg_quality"),
        ("degradation.rotation=[0,.inf]", "degradation.rotation"),
        ("data.resolution=60", "data.resolution"),
        ("data.val_count=-1", "data.val_count"),
        ("policy.base_channels=12", "policy.base_channels"),
        ("policy.channel_mults=[]", "policy.channel_mults"),
        ("policy.attention_levels=[3]", "policy.attention_levels"),
        ("policy.blocks_per_level=0", "policy.blocks_per_level"),
        ("policy.residual_scale=0", "policy.residual_scale"),
        ("diffusion.sample_steps=0", "diffusion.sample_steps"),
        ("diffusion.beta_end=0.0001", "beta_start < beta_end"),
        ("diffusion.eta=-0.1", "diffusion.eta"),
        ("optim.lr=0", "optim.lr"),
        ("optim.grad_clip=-1", "optim.grad_clip"),
        ("steps=0", "steps"),
        ("batch_size=0", "batch_size"),
        ("ema_decay=1.0", "ema_decay"),
        ("keep_last=-1", "keep_last"),
        ("val_degradation=harsh", "val_degradation"),
    ],
)
def test_validate_rejects_out_of_range(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, None, [override])
    assert words in str(info.value)


def test_resolution_mismatch_between_data_and_policy():
    with pytest.raises(ConfigError, match=r"policy.resolution \(32\) must equal data.resolution \(64\)"):
        load_config(PretrainConfig, None, ["policy.resolution=32"])
    # both changed together is fine
    cfg = load_config(PretrainConfig, None, ["policy.resolution=32", "data.resolution=32"])
    assert cfg.policy.resolution == cfg.data.resolution == 32


def test_policy_resolution_must_divide_by_the_downsampling():
    # three levels halve twice: 36 / 4 = 9 is fine, 36 with four levels (/8) is not
    PolicyConfig(resolution=36, channel_mults=(1, 2, 2)).validate()
    with pytest.raises(ConfigError, match=r"policy.resolution=36 must be divisible by .*=8"):
        PolicyConfig(resolution=36, channel_mults=(1, 2, 2, 2)).validate()


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------
def test_to_dict_from_dict_round_trip():
    cfg = load_config(
        PretrainConfig,
        None,
        ["policy.channel_mults=[1,2]", "policy.attention_levels=[1]", "optim.lr=3e-4", "data.hq=faces", "val_degradation=spec"],
    )
    data = to_dict(cfg)
    # plain YAML/JSON types only: tuples became lists
    assert data["policy"]["channel_mults"] == [1, 2] and data["degradation"]["blur_sigma"] == [0.1, 12.0]
    assert yaml.safe_load(yaml.safe_dump(data)) == data
    again = from_dict(PretrainConfig, data)
    assert again == cfg
    assert isinstance(again.policy.channel_mults, tuple) and isinstance(again.degradation, DegradationConfig)


def test_save_config_then_load_config(tmp_path):
    cfg = load_config(PretrainConfig, None, ["steps=11", "degradation.noise_sigma=[1,2]", "policy.stage1=none"])
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    assert load_config(PretrainConfig, path) == cfg


def test_every_field_has_a_round_trippable_default():
    # a field added without a YAML-representable default would break checkpoints' config.yaml
    for cls in (DegradationConfig, DataConfig, PolicyConfig, DiffusionConfig, OptimConfig, PretrainConfig):
        inst = cls()
        assert from_dict(cls, yaml.safe_load(yaml.safe_dump(to_dict(inst)))) == inst, cls.__name__
        assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING for f in dataclasses.fields(cls))


def test_compounded_gt_path_needs_the_final_step_untrained():
    """The reference's compounded chain has no latent for the final step's target level, so
    train_fraction = 1 with gt_path=compounded is refused at load time (it crashed after a rollout)."""
    from lrpo.rl.config import LRPOConfig

    base = ["init_checkpoint=runs/base", "gt_path=compounded", "sample_steps=50"]
    with pytest.raises(ConfigError, match=r"gt_path=compounded needs the final step untrained.*train_fraction=1.0"):
        load_config(LRPOConfig, None, base + ["train_fraction=1.0"])
    # floor(0.99 * 50) = 49 < 50: the reference setting is fine; without the GT term nothing is chained
    assert load_config(LRPOConfig, None, base + ["train_fraction=0.99"]).gt_path == "compounded"
    load_config(LRPOConfig, None, base + ["train_fraction=1.0", "reg_weight=0"])
    with pytest.raises(ConfigError, match=r"train_fraction=0.01 with sample_steps=50.*trains no step"):
        load_config(LRPOConfig, None, ["init_checkpoint=runs/base", "train_fraction=0.01"])


def test_non_string_yaml_keys_are_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("on: 5\n")  # YAML 1.1 reads `on` as True
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key\(s\) \[True\]"):
        load_config(PretrainConfig, path, [])
