"""The Python API: load a trained model and embed images and texts."""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from .data.images import ImageLike, ImageLoadError
from .data.pixels import to_pixels
from .checkpoint import load_checkpoint
from .devices import pick_device


class MissingHeadError(ValueError):
    """The model was trained without the head a call needs."""


def batch_starts(count: int, batch_size: int) -> range:
    """The first index of each batch of `batch_size` over `count` items (a size below 1 is refused,
    not left to loop forever or fail inside range())."""
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:  # numpy ints are Integral too
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    return range(0, count, batch_size)


def encode_readable_images(encoder, images: Sequence[ImageLike], batch_size: int = 64,
                           progress: bool = False) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """`encoder.encode_images` over a collection in which some files may be unreadable: returns the
    [N_ok, D] embeddings, the positions in `images` they belong to, and position -> error of the
    others. One bad file in thousands should not stop the work: a batch that fails is retried
    image by image. `encoder` is anything with `encode_images` (a VisLang, eval's encoders)."""
    vectors: list[np.ndarray] = []
    kept: list[int] = []
    failed: dict[int, str] = {}
    with tqdm(total=len(images), desc="embedding images", unit="img", disable=not progress) as bar:
        for start in batch_starts(len(images), batch_size):
            batch = list(images[start : start + batch_size])
            try:
                vectors.append(encoder.encode_images(batch, batch_size=len(batch)))
                kept += range(start, start + len(batch))
            except ImageLoadError:
                for offset, image in enumerate(batch):
                    try:
                        vectors.append(encoder.encode_images([image]))
                        kept.append(start + offset)
                    except ImageLoadError as err:
                        failed[start + offset] = str(err)
            bar.update(len(batch))
    return (np.concatenate(vectors) if vectors else encoder.encode_images([])), kept, failed


class VisLang:
    """A trained model ready for inference. Embeddings are float32 rows with unit L2 norm.

    The embeddings are the product: the index, the service and `vislang eval`'s figures use them as
    they are. Ranking terms that read the training split are opt-in, at query time (vislang/ranking/)."""

    def __init__(self, model, tokenizer, config: dict, device: torch.device, checkpoint: Path | None = None) -> None:
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.device, self.checkpoint = device, checkpoint
        self.image_size = config["model"]["image"]["image_size"]

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> "VisLang":
        device = pick_device(device)
        model, tokenizer, config, folder = load_checkpoint(path, device)
        return cls(model, tokenizer, config, device, folder)

    @torch.inference_mode()
    def encode_images(self, items: Sequence[ImageLike], batch_size: int = 64) -> np.ndarray:
        """Paths or PIL images -> [N, D]; an unreadable image raises ImageLoadError naming it."""
        out = [np.zeros((0, self.model.cfg["embed_dim"]), np.float32)]
        for start in batch_starts(len(items), batch_size):
            pixels = to_pixels(items[start : start + batch_size], self.image_size).to(self.device)
            out.append(self.model.encode_image(pixels).float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Strings -> [N, D]."""
        out = [np.zeros((0, self.model.cfg["embed_dim"]), np.float32)]
        for start in batch_starts(len(texts), batch_size):
            ids, mask = self.tokenizer(list(texts[start : start + batch_size]))
            out.append(self.model.encode_text(ids.to(self.device), mask.to(self.device)).float().cpu().numpy())
        return np.concatenate(out)

    def has(self, head: str) -> bool:
        """Whether the model was trained with a head: "matching" (match, re-ranking) or "decoder" (caption)."""
        return getattr(self.model, head, None) is not None

    def _require(self, head: str, config_key: str) -> None:
        if not self.has(head):
            raise MissingHeadError(f"this model has no {head} head: train it with model.{config_key}.enabled=true")

    @torch.inference_mode()
    def match(self, images: Sequence[ImageLike], texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N] probability that images[i] matches texts[i], from the matching head. An image that
        comes in several pairs (a re-ranked shortlist, a caption's beams) goes through the image
        tower once."""
        self._require("matching", "matching")
        if len(images) != len(texts):
            raise ValueError(f"match needs as many images as texts ({len(images)} != {len(texts)})")
        keys = [str(Path(item).resolve()) if isinstance(item, (str, Path)) else id(item) for item in images]
        firsts: dict = {}  # key -> the image, in order of first appearance
        for key, item in zip(keys, images):
            firsts.setdefault(key, item)
        distinct = {key: row for row, key in enumerate(firsts)}
        distinct_images = list(firsts.values())
        memory, image_emb = [], []
        for start in batch_starts(len(distinct_images), batch_size):
            pixels = to_pixels(distinct_images[start : start + batch_size], self.image_size).to(self.device)
            part_memory, part_emb = self.model.image_memory(pixels)
            memory.append(self.model.matching.image_memory(part_memory))  # projected once per image too
            image_emb.append(part_emb)
        rows = torch.tensor([distinct[key] for key in keys], dtype=torch.long, device=self.device)
        memory_all = torch.cat(memory) if memory else None
        emb_all = torch.cat(image_emb) if image_emb else None
        logits = [np.zeros(0, np.float32)]
        for start in batch_starts(len(texts), batch_size):
            pair = rows[start : start + batch_size]
            ids, mask = (t.to(self.device) for t in self.tokenizer(list(texts[start : start + batch_size])))
            text_tokens, text_pooled = self.model.text_tower(ids, mask)
            similarity = self.model.logit_scale.exp() * (emb_all[pair] * self.model.project_text(text_pooled, ids, mask)).sum(-1)
            logits.append(self.model.matching.score(text_tokens, mask, memory_all[pair], similarity).float().cpu().numpy())
        return torch.sigmoid(torch.from_numpy(np.concatenate(logits))).numpy()

    def caption(self, images: Sequence[ImageLike], max_length: int = 32, num_beams: int = 3, batch_size: int = 32,
                rerank: bool = True) -> list[str]:
        """A short description of each image, from the caption decoder (beam search; 1 beam is greedy).

        With `rerank` and a matching head, the head picks among each image's `num_beams` final
        hypotheses rather than taking the decoder's best (on val, 3 beams: BLEU-4 0.157 -> 0.185,
        CIDEr 0.743 -> 0.862; docs/RESULTS.md)."""
        self._require("decoder", "decoder")
        returned = num_beams if rerank and self.model.matching is not None else 1
        hypotheses = self._hypotheses(images, max_length, num_beams, returned, batch_size)
        if returned == 1:
            return hypotheses
        repeated = [item for item in images for _ in range(returned)]  # hypotheses come image after image
        scores = self.match(repeated, [text or " " for text in hypotheses]).reshape(-1, returned)
        return [hypotheses[row * returned + int(np.argmax(row_scores))] for row, row_scores in enumerate(scores)]

    @torch.inference_mode()
    def _hypotheses(self, images: Sequence[ImageLike], max_length: int, num_beams: int, returned: int,
                    batch_size: int) -> list[str]:
        """Each image's `returned` best beam-search captions, best first, image after image."""
        captions: list[str] = []
        for start in batch_starts(len(images), batch_size):
            pixels = to_pixels(images[start : start + batch_size], self.image_size).to(self.device)
            memory, _ = self.model.image_memory(pixels)
            for ids in self.model.decoder.generate(memory, max_length=max_length, num_beams=num_beams,
                                                   num_return_sequences=returned):
                captions.append(self.tokenizer.decode(self.model.caption_vocab.to_tokenizer(ids)))
        return captions


def load(path: str | Path, device: str | torch.device | None = None) -> VisLang:
    """A run's output folder (its latest checkpoint) or a checkpoint folder -> VisLang."""
    return VisLang.load(path, device)
