"""The Accelerate config files in configs/accelerate: valid for `accelerate launch`, and right for our models."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from accelerate.utils.dataclasses import get_module_class_from_name

from tests.data.shard_folders import write_shard_folder
from w2v.errors import W2VError
from w2v.train.config import MaskingConfig, ModelConfig, TrainConfig
from w2v.train.presets import PRESETS, build_model
from w2v.train.recipe import pretrain

FOLDER = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16, 2),
    "fsdp.yaml": (DistributedType.FSDP, 8, 1),
}


def test_every_config_file_loads_as_the_setup_it_is_named_for() -> None:
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == sorted(EXPECTED)
    for name, (kind, processes, machines) in EXPECTED.items():
        config = load_config_from_file(str(FOLDER / name))
        assert (config.distributed_type, config.num_processes, config.num_machines) == (kind, processes, machines)
        assert config.mixed_precision == "no", f"{name}: precision belongs to the run's config"
        assert "accelerate launch --config_file configs/accelerate/" + name in (FOLDER / name).read_text()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_fsdp_wraps_a_layer_class_every_preset_has(preset: str) -> None:
    wrapped = load_config_from_file(str(FOLDER / "fsdp.yaml")).fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    small = {**sizes, "conv_dim": (32,) * 7, "codevector_dim": 32, "proj_codevector_dim": 32}
    model = build_model(ModelConfig(preset=preset, overrides=small), MaskingConfig())  # the preset's layer kind
    for name in wrapped.split(","):
        assert get_module_class_from_name(model, name) is not None, f"{preset} has no {name}"


def test_a_deepspeed_launch_is_refused_with_the_alternative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = write_shard_folder(tmp_path / "shards", [16_000] * 4)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    config = TrainConfig.from_dict({"model": {"preset": "tiny"}, "max_steps": 1})
    with pytest.raises(W2VError, match=r"DeepSpeed is not supported: .* use configs/accelerate/fsdp\.yaml"):
        pretrain(config, [str(shards)], tmp_path / "run")
