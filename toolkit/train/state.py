"""The run contract: what a checkpoint holds besides tensors, and what predict/evaluate/report read back.

Every recipe fills one `TrainerState`; `save_checkpoint` writes it as trainer_state.json beside the
weights, and `TrainerState.read` turns that file back into the same object. Fields that only some
recipes use (the noise of a denoiser, the classes of a classifier) are typed and default to "not
used", so a reader never guesses at keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import CheckpointError
from toolkit.runs import write_text_whole

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    recipe: str  # the recipe that trained it, e.g. "fast_cnn" or "autoencoder"
    model_spec: dict  # {"name": a key of toolkit.models.MODELS, "kwargs": {...}}: how to rebuild the model
    preprocessing: dict  # classifiers: {"image_size", "mean", "std"}; denoisers: {"image_size"}
    classes: list[str] | None = None  # classifiers: class names, in label order
    step: int = 0  # optimizer iterations done
    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    train_seconds: float = 0.0  # optimisation time (evaluations excluded)
    images_seen: int = 0  # training images over all processes
    mixed_precision: str = "no"  # what it was trained with: 'no', 'bf16' or 'fp16'
    num_processes: int = 1  # a resume must use as many (each process's data order and RNG depend on it)
    weights: str | None = None  # where the initial weights came from
    flip_tta: bool = False  # classifiers: evaluated on each image and its mirror
    temperature: float = 1.0  # classifiers: fitted on the validation images after training (calibration)
    noise: dict | None = None  # denoisers: the training noise (NoiseSpec.as_dict())
    conditioned: bool = False  # denoisers: told the noise level per image
    label: str | None = None  # a short display name (the denoiser's --model)
    split: dict | None = None  # the data split: fingerprint and held-out files (toolkit.data.classification)
    extra: dict = field(default_factory=dict)  # recipe-specific facts that no reader relies on

    @property
    def model(self) -> str:
        return self.model_spec["name"]

    @property
    def image_size(self) -> int:
        pre = self.preprocessing
        return int(pre.get("image_size", pre.get("resolution", 0)))  # 'resolution': checkpoints before the rename

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, values: dict) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [name for name in ("recipe", "model_spec", "preprocessing") if name not in values]
        if missing:
            raise CheckpointError(f"the trainer state lacks {', '.join(missing)}: not a checkpoint of this toolkit")
        extra = dict(values.get("extra") or {})
        extra.update({k: v for k, v in values.items() if k not in known and k != "model"})
        return cls(**{k: v for k, v in values.items() if k in known and k != "extra"}, extra=extra)

    @classmethod
    def read(cls, checkpoint: Path | str) -> TrainerState:
        path = Path(checkpoint) / STATE_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"{checkpoint} is not a checkpoint of this toolkit (no {STATE_FILE})") from None
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is corrupt ({error}); delete that checkpoint folder to fall back "
                                  "to the previous one") from None

    def write(self, checkpoint: Path | str) -> None:
        """Atomically: a crash leaves the previous file or the new one, never half of one."""
        write_text_whole(Path(checkpoint) / STATE_FILE, self.to_json())

    def mismatches(self, other: TrainerState) -> list[str]:
        """What keeps `other` (from a checkpoint) from continuing this run: the model, its classes, the
        process count. Empty when a resume may go on."""
        found = []
        if other.model_spec.get("name") != self.model_spec.get("name"):
            found.append(f"model={other.model!r} but this run has model={self.model!r}")
        if other.classes != self.classes:
            found.append(f"classes={other.classes!r} but this run has classes={self.classes!r}")
        if other.label != self.label:
            found.append(f"label={other.label!r} but this run has label={self.label!r}")
        if other.num_processes != self.num_processes:
            found.append(f"it was written by {other.num_processes} process(es) and this run has {self.num_processes} "
                         "(each process's share of the data and its random state depend on the count)")
        return found
