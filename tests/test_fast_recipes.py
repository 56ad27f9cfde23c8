"""The fast network, EfficientNet-Lite0 and -Lite2 and their offline ImageNet weights, the schedule and weight
averaging, and the two recipes on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
from conftest import run_command_line
from PIL import Image
from test_recipes import assert_same_final_weights, final_weights, run_in_process

from toolkit.errors import UserError
from toolkit.inference import load_trained_model
from toolkit.models.efficientnet_lite import (
    LITE_MEAN,
    LITE_STD,
    NETWORK_NAMES,
    efficientnet_lite0,
    efficientnet_lite2,
    frozen_blocks,
    last_stages_start,
    load_lite_imagenet,
    map_efficientnet_pytorch_keys,
    packaged_weights,
)
from toolkit.models.fast_resnet import FastResNet
from toolkit.train.ema import ModelEMA
from toolkit.train.schedule import one_cycle_lr

ESPRESSO = 967  # ImageNet class index
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.mark.parametrize("make, size", [(lambda: FastResNet(6), 48), (lambda: FastResNet(6), 61),
                                        (lambda: efficientnet_lite0(num_classes=6), 64),
                                        (lambda: efficientnet_lite2(num_classes=6), 64)])
def test_new_models_shape_gradients_finiteness(make, size):
    torch.manual_seed(0)
    model = make()
    logits = model(torch.randn(3, 3, size, size))
    assert logits.shape == (3, 6) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def _imagenet_top(model, image: np.ndarray) -> tuple[int, float]:
    resized = Image.fromarray(image).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model(x).softmax(1)[0]
    return int(probabilities.argmax()), float(probabilities.max())


@pytest.mark.parametrize("network, make", [("efficientnet_lite0", efficientnet_lite0),
                                           ("efficientnet_lite2", efficientnet_lite2)])
def test_offline_imagenet_weights_recognise_real_photos(network, make):
    model = make()
    assert "ImageNet head" in load_lite_imagenet(model, network)
    model.eval()
    label, probability = _imagenet_top(model, skimage.data.coffee())
    assert label == ESPRESSO and probability > 0.8
    assert _imagenet_top(model, skimage.data.chelsea())[0] in CATS


def test_key_mapping_covers_every_tensor_and_refuses_strangers():
    for network, make, blocks, top in (("efficientnet_lite0", efficientnet_lite0, 16, 11),
                                       ("efficientnet_lite2", efficientnet_lite2, 21, 15)):
        state = torch.load(packaged_weights(network), map_location="cpu", weights_only=True)
        mapped = map_efficientnet_pytorch_keys(state)
        model = make()
        own = {k for k in model.state_dict() if "num_batches_tracked" not in k}
        assert set(mapped) == own
        assert len(model.blocks) == blocks and last_stages_start(model) == top
        assert [frozen_blocks(model, "top"), frozen_blocks(model, "top", 8), frozen_blocks(model, "finetune", 8),
                frozen_blocks(model, "linear_probe")] == [top, 8, 0, blocks]
    with pytest.raises(UserError, match="unexpected key"):
        map_efficientnet_pytorch_keys({"layer1.weight": torch.zeros(1)})
    # one network's weights given for the other: said, not loaded half-way
    with pytest.raises(UserError, match="does not fit EfficientNet-Lite2"):
        load_lite_imagenet(efficientnet_lite2(), "efficientnet_lite2", packaged_weights("efficientnet_lite0"))


def test_the_benchmark_times_top_mode_from_the_block_the_recipe_trains_from():
    from toolkit.benchmark import recipe_models

    [entry] = [entry for name, entry in recipe_models().items() if name.endswith("(efficientnet_lite0)")]
    assert entry["split"] == 11 and len(entry["build"]().blocks) == 16  # the default: Lite0's last two stages


def test_one_cycle_schedule_shape():
    lrs = [one_cycle_lr(step, 100, 1.0, warmup_fraction=0.2, final_fraction=0.02) for step in range(100)]
    assert lrs[0] == pytest.approx(0.05) and max(lrs) == pytest.approx(1.0) and lrs.index(1.0) == 19
    assert lrs[-1] == pytest.approx(0.02, abs=1e-3) and all(a >= b for a, b in zip(lrs[19:], lrs[20:]))


def test_a_re_planned_schedule_moves_on_from_where_it_stood():
    """A time budget's re-plans change the total; the schedule's position then spreads what is left of it over
    the iterations that follow: no jump, it ends at the first plan's end, and with no re-plan it is the
    iteration itself, exactly. A budget recorded before this (no `stretched_schedule`) reads the new total."""
    from types import SimpleNamespace

    from toolkit.train.loop import TrainingLoop
    from toolkit.train.schedule import stretched_position

    assert all(stretched_position(i, 1000, []) == i for i in range(1000))  # bit-identical without re-plans
    changes = [(100, 1200), (400, 900)]  # at 100 of 1000 more iterations, at 400 fewer
    positions = [stretched_position(i, 1000, changes) for i in range(901)]
    assert positions[:101] == list(range(101)) and positions[900] == 1000
    assert positions[400] == 100 + 900 * 300 / 1100  # on the first stretch's line, where the second begins
    steps = [b - a for a, b in zip(positions, positions[1:])]
    assert all(step == pytest.approx(900 / 1100) for step in steps[100:400])
    assert all(step == pytest.approx((1000 - positions[400]) / 500) for step in steps[400:])
    lrs = [one_cycle_lr(position, 1000, 1.0, 0.05) for position in positions]
    jumps = [abs(b - a) for a, b in zip(lrs, lrs[1:])]
    assert max(jumps[50:]) < 0.005 and lrs[-1] == pytest.approx(0.02)  # (warm-up steps: 1/50 each)
    assert abs(one_cycle_lr(400, 900, 1.0, 0.05) - one_cycle_lr(399, 1200, 1.0, 0.05)) > 0.1  # the total's jump

    def loop_with(budget: dict, total_steps: int):
        return SimpleNamespace(state=SimpleNamespace(extra={"budget": budget}), total_steps=total_steps)

    replans = [{"at_step": 100, "steps_before": 1000}, {"at_step": 400, "steps_before": 1200}]
    budget = {"steps": 900, "replans": replans, "stretched_schedule": True}
    assert TrainingLoop.schedule_at(loop_with(budget, 900), 650) == (positions[650], 1000)
    older = {key: value for key, value in budget.items() if key != "stretched_schedule"}
    assert TrainingLoop.schedule_at(loop_with(older, 900), 650) == (650, 900)
    assert TrainingLoop.schedule_at(loop_with(budget | {"replans": []}, 1000), 650) == (650, 1000)
    assert TrainingLoop.schedule_at(SimpleNamespace(state=SimpleNamespace(extra={}), total_steps=80), 7) == (7, 80)


def test_ema_tracks_the_average_and_round_trips():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.5, warmup_steps=0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # 0.5 * 0 + 0.5 * 1
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.5))
    copy = ModelEMA(torch.nn.Linear(2, 1, bias=False))
    copy.load_state_dict(ema.state_dict())
    assert torch.equal(copy.model.weight, ema.model.weight) and copy.updates == 1


FAST = ["--train_image_sizes=24,32", "--image_size=40", "--batch_size=16", "--eval_batch_size=32", "--eval_every=3",
        "--checkpoint_every=2", "--num_workers=1", "--epochs=2", "--widths=8,16,16,32"]


def test_fast_cnn_runs_and_resumes_exactly_with_its_weight_average(tiny_intel, tmp_path):
    common = [f"--data={tiny_intel}", *FAST]
    whole = run_in_process("fast_cnn", [*common, f"--run_dir={tmp_path / 'whole'}"])
    assert whole["steps"] == 2 * (84 // 16) and whole["flip_tta"] is True
    assert (tmp_path / "whole" / "plots" / "time_to_accuracy.png").is_file()
    _, state = load_trained_model(tmp_path / "whole")  # evaluated (and served) at the larger test size
    assert state.image_size == 40
    run_in_process("fast_cnn", [*common, f"--run_dir={tmp_path / 'split'}", "--max_steps=3"])
    resumed = run_in_process("fast_cnn", [*common, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert_same_final_weights(tmp_path / "whole", tmp_path / "split")
    assert resumed["test_accuracy"] == whole["test_accuracy"]


@pytest.mark.parametrize("network, mode", [("efficientnet_lite0", "top"), ("efficientnet_lite0", "finetune"),
                                           ("efficientnet_lite0", "linear_probe"), ("efficientnet_lite2", "top")])
def test_efficientnet_recipe_modes(tiny_intel, tmp_path, network, mode, capsys):
    summary = run_in_process("efficientnet_lite0", [
        f"--data={tiny_intel}", f"--run_dir={tmp_path / mode}", f"--mode={mode}", "--image_size=32",
        "--batch_size=16", "--eval_batch_size=32", "--max_steps=3", "--num_workers=1", f"--model={network}"])
    assert summary["recipe"] == f"{network}-{mode}" and f"ImageNet {NETWORK_NAMES[network]}" in summary["weights"]
    assert 0 <= summary["test_accuracy"] <= 1
    said = capsys.readouterr().out
    assert "; freed memory kept in the process for the next step" in said  # glibc (toolkit.memory)
    if mode == "top":  # from the last two stages: the blocks below are cached
        assert f"[top] blocks[:{ {'efficientnet_lite0': 11, 'efficientnet_lite2': 15}[network]}] features" in said
    model, _ = load_trained_model(tmp_path / mode)  # the checkpoint rebuilds its own network
    assert len(model.blocks) == {"efficientnet_lite0": 16, "efficientnet_lite2": 21}[network]


def test_efficientnet_recipe_refuses_a_block_its_network_lacks(capsys):
    status, _, err = run_command_line("efficientnet_lite0", ["--model=efficientnet_lite2", "--train_from_block=22"],
                                      capsys)
    assert status == 2 and "--train_from_block must be 1..21 (EfficientNet-Lite2 has 21 blocks)" in err


def test_efficientnet_top_mode_resumes_exactly_from_its_cached_features(tiny_intel, tmp_path):
    common = [f"--data={tiny_intel}", "--image_size=32", "--batch_size=16", "--eval_batch_size=32", "--epochs=2",
              "--checkpoint_every=2", "--eval_every=3", "--num_workers=1", "--train_from_block=12"]
    whole = run_in_process("efficientnet_lite0", [*common, f"--run_dir={tmp_path / 'whole'}"])
    run_in_process("efficientnet_lite0", [*common, f"--run_dir={tmp_path / 'split'}", "--max_steps=3"])
    resumed = run_in_process("efficientnet_lite0", [*common, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert_same_final_weights(tmp_path / "whole", tmp_path / "split")
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    frozen = final_weights(tmp_path / "whole")
    from toolkit.models.efficientnet_lite import efficientnet_lite0, load_lite_imagenet

    pretrained = efficientnet_lite0(num_classes=6)
    load_lite_imagenet(pretrained)
    assert torch.equal(frozen["blocks.3.depthwise.0.weight"], pretrained.state_dict()["blocks.3.depthwise.0.weight"])
    assert not torch.equal(frozen["blocks.14.depthwise.0.weight"],
                           pretrained.state_dict()["blocks.14.depthwise.0.weight"])


def test_efficientnet_time_budget_counts_the_feature_cache_and_trains_as_the_epochs_it_chose(
        tiny_intel, tmp_path, capsys):
    """--train_minutes in top mode: the step is timed on cached features (then undone: weights, AdamW, the weight
    average, dropout's generators); the seconds spent caching the frozen blocks' features count as training, so
    the plan is made with what is left. A budget shorter than one epoch trains the weights of --epochs=1."""
    common = [f"--data={tiny_intel}", "--image_size=32", "--batch_size=16", "--eval_batch_size=32", "--eval_every=0",
              "--num_workers=1", "--train_from_block=12", "--keep_feature_cache=false"]
    budget = run_in_process("efficientnet_lite0", [*common, "--train_minutes=0.0001",
                                                   f"--run_dir={tmp_path / 'budget'}"])
    assert budget["budget"]["epochs"] == 1 and budget["budget"]["steps"] == budget["steps"]
    assert "s already counted as training" in capsys.readouterr().out
    run_in_process("efficientnet_lite0", [*common, "--epochs=1", f"--run_dir={tmp_path / 'epochs'}"])
    assert_same_final_weights(tmp_path / "budget", tmp_path / "epochs")
    with pytest.raises(UserError, match="--train_minutes does not apply to --mode=linear_probe"):
        run_in_process("efficientnet_lite0", [*common, "--mode=linear_probe", "--train_minutes=1",
                                              f"--run_dir={tmp_path / 'probe'}"])


def test_efficientnet_top_mode_keeps_its_frozen_features_for_other_seeds_and_recomputes_a_damaged_cache(
        tiny_intel, tmp_path, capsys):
    cache = tmp_path / "cache"
    common = [f"--data={tiny_intel}", "--image_size=32", "--batch_size=16", "--eval_batch_size=32", "--max_steps=4",
              "--checkpoint_every=4", "--eval_every=0", "--num_workers=1", "--train_from_block=12",
              f"--cache_dir={cache}"]
    run_in_process("efficientnet_lite0", [*common, "--seed=0", f"--run_dir={tmp_path / 'seed-0'}"])
    out = capsys.readouterr().out
    assert "features of 84 images and their mirrors (0 MB, torch.float32): 84 computed, kept in" in out
    [kept] = (cache / "features").glob("efficientnet_lite0-*.pt")
    seed_0 = torch.load(kept, weights_only=True)
    assert len(seed_0["indices"]) == 84 and seed_0["features"].shape[:2] == (84, 2)

    # seed 1 validates on other images: it computes only the training images seed 0 did not train on
    run_in_process("efficientnet_lite0", [*common, "--seed=1", f"--run_dir={tmp_path / 'seed-1'}"])
    out = capsys.readouterr().out
    both = torch.load(kept, weights_only=True)
    added = len(both["indices"]) - 84
    assert 0 < added < 84 and f": {added} computed, {84 - added} read from {kept}, kept in {kept}" in out
    rows = torch.searchsorted(both["indices"], seed_0["indices"])
    assert torch.equal(both["features"][rows], seed_0["features"])  # seed 0's rows kept as they were

    # a third run of seed 1 reads everything and trains exactly as the second did
    run_in_process("efficientnet_lite0", [*common, "--seed=1", f"--run_dir={tmp_path / 'seed-1-again'}"])
    assert f": 0 computed, 84 read from {kept} (" in capsys.readouterr().out
    assert_same_final_weights(tmp_path / "seed-1", tmp_path / "seed-1-again")
    # the summaries say so, and a comparison's training time tells runs that read their features apart
    from toolkit.comparison import training_time_cell

    summaries = {name: json.loads((tmp_path / name / "summary.json").read_text())
                 for name in ("seed-0", "seed-1-again")}
    assert [summaries[name]["frozen_features"][key] for name in summaries for key in ("computed", "read")] == \
        [84, 0, 0, 84]
    model = {"per_seed": dict(enumerate(summaries.values())), "train_seconds": {"mean": 12.3}}
    assert training_time_cell(model) == "12 (1 of 2 seeds read frozen features from the cache)"
    # what a seed reads is what it would have computed alone, to rounding (a convolution's result for one image
    # may depend on the size of the batch it came in)
    fresh = [*common[:-1], f"--cache_dir={tmp_path / 'fresh-cache'}", "--seed=1"]
    run_in_process("efficientnet_lite0", [*fresh, f"--run_dir={tmp_path / 'seed-1-fresh'}"])
    [alone] = (tmp_path / "fresh-cache" / "features").glob("*.pt")
    alone = torch.load(alone, weights_only=True)
    both = torch.load(kept, weights_only=True)
    rows = torch.searchsorted(both["indices"], alone["indices"])
    torch.testing.assert_close(both["features"][rows], alone["features"], rtol=1e-3, atol=1e-4)
    # without the cache: every row computed, nothing written
    run_in_process("efficientnet_lite0", [*common, "--seed=1", "--keep_feature_cache=false",
                                          f"--run_dir={tmp_path / 'seed-1-uncached'}"])
    assert ": 84 computed (" in capsys.readouterr().out
    assert len(torch.load(kept, weights_only=True)["indices"]) == 84 + added

    kept.write_bytes(kept.read_bytes()[:1000])  # cut short, e.g. by a disk that filled up
    run_in_process("efficientnet_lite0", [*common, "--seed=1", f"--run_dir={tmp_path / 'seed-1-damaged'}"])
    out = capsys.readouterr().out
    assert f"ignoring the damaged feature cache {kept}" in out and ": 84 computed, kept in" in out
    assert_same_final_weights(tmp_path / "seed-1-fresh", tmp_path / "seed-1-damaged")  # both computed all 84
    assert len(torch.load(kept, weights_only=True)["indices"]) == 84  # written again, whole

    # other frozen blocks are other features: a second entry beside the first
    run_in_process("efficientnet_lite0", [*common, "--seed=0", "--train_from_block=13",
                                          f"--run_dir={tmp_path / 'block-13'}"])
    assert ": 84 computed, kept in" in capsys.readouterr().out
    assert len(list((cache / "features").glob("*.pt"))) == 2


def test_cached_rows_reads_what_it_has_computes_the_rest_and_answers_in_the_order_asked(tmp_path, capsys):
    from toolkit.data.cached_features import cached_rows

    asked = []

    def compute(indices):  # row i of a stored set: (i, -i), so every row says which image it belongs to
        asked.append(indices.tolist())
        return torch.tensor([[i, -i] for i in indices], dtype=torch.float32)

    file = tmp_path / "features" / "rows.pt"
    rows, computed = cached_rows(file, np.array([7, 2, 5]), compute, write=True)
    assert rows[:, 0].tolist() == [7, 2, 5] and computed == 3 and asked == [[2, 5, 7]]
    rows, computed = cached_rows(file, np.array([9, 5, 1]), compute, write=True)
    assert rows[:, 0].tolist() == [9, 5, 1] and computed == 2 and asked[-1] == [1, 9]
    assert torch.load(file, weights_only=True)["indices"].tolist() == [1, 2, 5, 7, 9]
    rows, computed = cached_rows(file, np.array([1, 2, 5, 7, 9]), compute, write=False)
    assert computed == 0 and len(asked) == 2 and rows[:, 1].tolist() == [-1, -2, -5, -7, -9]
    rows, computed = cached_rows(file, np.array([3]), compute, write=False)  # computed, not kept
    assert computed == 1 and torch.load(file, weights_only=True)["indices"].tolist() == [1, 2, 5, 7, 9]

    torch.save({"indices": torch.tensor([4, 3]), "features": torch.zeros(2, 2)}, file)  # not in order: not trusted
    rows, computed = cached_rows(file, np.array([3, 4]), compute, write=True)
    assert computed == 2 and rows[:, 0].tolist() == [3, 4]
    assert "ignoring the damaged feature cache" in capsys.readouterr().out
    assert not list(file.parent.glob("*.partial"))
