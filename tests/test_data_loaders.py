"""Loaders: exact resume, seeding, aspect and size grouping, sharding, splits and concatenations."""
from __future__ import annotations

import math

import pytest
import torch

from fad.config import get_cfg_defaults
from fad.config.validate import validate_config
from fad.data import DataError, build_dataset, make_test_loader, make_train_loader, split_dataset
from fad.data.build import batch_groups, merge_small_groups
from fad.data.samplers import ShardSampler, TrainBatchSampler
from fad.data.synthetic import generate
from fad.data.transforms import padded_size, padded_train_size
from fad.errors import ConfigError
from fad.utils import dist as fad_dist


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate(root, 12, 5, seed=0, min_size=48, max_size=96)
    cfg = get_cfg_defaults()
    cfg.DATASETS.ROOT = str(root)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (40, 48, 56), 80
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 48, 80
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.TEST.IMS_PER_BATCH = 2, 9, 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def fake_world(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(fad_dist.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(fad_dist.dist, "get_rank", lambda: rank)
    monkeypatch.setattr(fad_dist.dist, "get_world_size", lambda: world)
    monkeypatch.setattr(fad_dist.dist, "barrier", lambda: None)
    monkeypatch.setattr(fad_dist.dist, "broadcast_object_list", lambda objects, src=0: None)


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(images_a, images_b))
        for ta, tb in zip(targets_a, targets_b):
            assert ta.keys() == tb.keys() and ta["image_id"] == tb["image_id"]
            assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["size"], tb["size"])


def test_resume_gives_the_same_batches_as_an_uninterrupted_run(cfg):
    dataset = build_dataset(cfg, ["synthetic_voc_train"], is_train=True)
    full = list(make_train_loader(cfg, dataset))
    resumed_loader = make_train_loader(cfg, dataset, start_iter=5)
    assert len(full) == 9 and len(resumed_loader) == 4
    assert_same_batches(full[5:], list(resumed_loader))
    assert all(len(images) == 2 for images, _ in full)
    sizes = {tuple(t["size"].tolist()) for _, targets in full for t in targets}
    assert len({min(s) for s in sizes}) > 1  # random short sides really vary
    assert list(make_train_loader(cfg, dataset, start_iter=9)) == []


def test_seed_changes_the_stream_and_workers_do_not(cfg):
    dataset = build_dataset(cfg, ["synthetic_coco_train"], is_train=True)
    ids = [[t["image_id"] for t in targets] for _, targets in make_train_loader(cfg, dataset)]
    other = cfg.clone()
    other.SEED = 1
    assert ids != [[t["image_id"] for t in tg] for _, tg in make_train_loader(other, dataset)]
    workers = cfg.clone()
    workers.DATALOADER.NUM_WORKERS = 1
    workers.SOLVER.MAX_ITER = 3
    assert_same_batches(list(make_train_loader(cfg, dataset))[:3],
                        list(make_train_loader(workers, dataset)))


def test_infinite_loader_keeps_going(cfg):
    dataset = build_dataset(cfg, ["synthetic_voc_train"], is_train=True)
    loader = iter(make_train_loader(cfg, dataset, infinite=True))
    assert len([next(loader) for _ in range(cfg.SOLVER.MAX_ITER + 3)]) == 12


def test_aspect_grouped_batches_share_an_orientation(cfg):
    dataset = build_dataset(cfg, ["synthetic_voc_train"], is_train=True)
    landscape = [int(w > h) for h, w in (dataset.image_size(i) for i in range(len(dataset)))]
    assert 0 < sum(landscape) < len(landscape)
    for _, targets in make_train_loader(cfg, dataset):
        assert len({int(t["orig_size"][1] > t["orig_size"][0]) for t in targets}) == 1


class _Sizes:
    """A dataset stand-in that has only image sizes."""

    def __init__(self, sizes: list[tuple[int, int]]):
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def image_size(self, index: int) -> tuple[int, int]:
        return self.sizes[index]


def test_size_groups_are_the_padded_training_sizes_computed_by_hand():
    cfg = get_cfg_defaults()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128, 160), 256
    cfg.INPUT.SIZE_DIVISIBILITY = 32
    # at short side 160: (300, 200) -> (240, 160) -> (256, 160); (320, 200) -> (256, 160) too;
    # (200, 300) -> (160, 240) -> (160, 256); (250, 200) -> (200, 160) -> (224, 160);
    # (600, 200) -> capped at 256 long: (256, 85) -> (256, 96)
    sizes = [(300, 200), (200, 300), (320, 200), (250, 200), (600, 200), (250, 200), (200, 320)]
    assert [padded_train_size(cfg, h, w) for h, w in sizes] == [
        (256, 160), (160, 256), (256, 160), (224, 160), (256, 96), (224, 160), (160, 256)]
    cfg.DATALOADER.SIZE_GROUPING, cfg.SOLVER.IMS_PER_BATCH = True, 1
    assert batch_groups(cfg, _Sizes(sizes)) == [0, 1, 0, 2, 3, 2, 1]
    cfg.SOLVER.IMS_PER_BATCH = 2  # (256, 96) has one image: it joins (224, 160), the next area
    assert batch_groups(cfg, _Sizes(sizes)) == [0, 1, 0, 2, 2, 2, 1]
    cfg.SOLVER.IMS_PER_BATCH = 3  # portrait 1 + 2 -> (224, 160), then 2 + the landscape 2
    assert batch_groups(cfg, _Sizes(sizes)) == [0, 0, 0, 1, 1, 1, 0]
    cfg.SOLVER.IMS_PER_BATCH = 8  # fewer images than a batch: one group
    assert batch_groups(cfg, _Sizes(sizes)) == [0] * 7
    cfg.DATALOADER.SIZE_GROUPING = False
    assert batch_groups(cfg, _Sizes(sizes)) == [0, 1, 0, 0, 0, 0, 1]  # portrait / landscape
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    assert batch_groups(cfg, _Sizes(sizes)) == [0] * 7


def test_small_size_groups_join_the_next_larger_one():
    a, b, c, d = (64, 32), (96, 64), (128, 64), (32, 96)  # portrait by area, then landscape d
    assert merge_small_groups([c, a, b, b, c, d, d], 2) == [c, b, b, b, c, d, d]
    assert merge_small_groups([a, b, c, d], 2) == [b, b, d, d]  # c waits, closes with d
    assert merge_small_groups([a, a, c, d], 2) == [a, a, d, d]
    assert merge_small_groups([a, a, b, c, c], 2) == [a, a, c, c, c]
    assert merge_small_groups([a, a, c], 2) == [a, a, a]  # the leftover joins the last group
    assert merge_small_groups([], 4) == []


def test_size_grouped_batches_hold_one_group_and_pad_less(cfg):
    grouped = cfg.clone()
    grouped.INPUT.MIN_SIZE_TRAIN, grouped.INPUT.SIZE_DIVISIBILITY = (56,), 16
    grouped.SOLVER.MAX_ITER = 12
    dataset = build_dataset(grouped, ["synthetic_voc_train"], is_train=True)
    grouped.DATALOADER.SIZE_GROUPING = True
    group = dict(zip((dataset.image_id(i) for i in range(len(dataset))),
                     batch_groups(grouped, dataset)))
    assert len(set(group.values())) > 2  # more groups than the two orientations
    padded = {}
    for name, on in (("plain", False), ("grouped", True)):
        grouped.DATALOADER.SIZE_GROUPING = on
        batches = list(make_train_loader(grouped, dataset))
        assert len(batches) == 12 and all(len(images) == 2 for images, _ in batches)
        if on:
            assert all(len({group[t["image_id"]] for t in targets}) == 1 for _, targets in batches)
            assert_same_batches(batches[5:], list(make_train_loader(grouped, dataset, 5)))
        padded[name] = sum(len(images) * math.prod(padded_size(grouped, (
            max(i.shape[1] for i in images), max(i.shape[2] for i in images))))
            for images, _ in batches)
    assert padded["grouped"] < padded["plain"]


def test_size_grouping_with_the_random_crop_is_refused():
    cfg = get_cfg_defaults()
    cfg.DATALOADER.SIZE_GROUPING, cfg.INPUT.CROP.ENABLED = True, True
    with pytest.raises(ConfigError, match="DATALOADER.SIZE_GROUPING .* INPUT.CROP.ENABLED"):
        validate_config(cfg)
    grouped = TrainBatchSampler([0, 1] * 10, batch_size=2, seed=0, max_iter=50)
    ungrouped = TrainBatchSampler([0] * 20, batch_size=2, seed=0, max_iter=50)
    assert all(len({i % 2 for i, _ in batch}) == 1 for batch in grouped)
    assert any(len({i % 2 for i, _ in batch}) == 2 for batch in ungrouped)


def test_ranks_get_disjoint_shards_of_each_epoch():
    samplers = [TrainBatchSampler([0] * 10, 1, seed=3, max_iter=5, rank=r, world_size=2)
                for r in (0, 1)]
    shards = [[i for batch in sampler for i, _ in batch] for sampler in samplers]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(10))
    seeds = [s for batch in TrainBatchSampler([0] * 10, 2, seed=3, max_iter=5) for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_distributed_loaders_split_batches_and_images(cfg, monkeypatch):
    dataset = build_dataset(cfg, ["synthetic_voc_val"], is_train=False)
    seen = []
    for rank in (0, 1):
        fake_world(monkeypatch, rank, 2)
        train = make_train_loader(cfg, build_dataset(cfg, ["synthetic_voc_train"], is_train=True))
        assert all(len(images) == 1 for images, _ in train)
        test = make_test_loader(cfg, dataset)
        assert test.batch_size == 1
        seen += [t["image_id"] for _, targets in test for t in targets]
    assert sorted(seen) == list(range(len(dataset)))
    fake_world(monkeypatch, 0, 3)
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH"):
        make_train_loader(cfg, dataset)


def test_test_loader_is_ordered_and_deterministic(cfg):
    dataset = build_dataset(cfg, ["synthetic_coco_val"], is_train=False)
    batches = list(make_test_loader(cfg, dataset))
    assert [len(images) for images, _ in batches] == [2, 2, 1]
    ids = [t["image_id"] for _, targets in batches for t in targets]
    assert ids == [dataset.image_id(i) for i in range(5)]
    assert_same_batches(batches, list(make_test_loader(cfg, dataset)))
    assert list(ShardSampler(7, rank=1, world_size=3)) == [1, 4] and len(ShardSampler(7, 2, 3)) == 2


def test_split_dataset_is_disjoint_seeded_and_keeps_classes(cfg):
    dataset = build_dataset(cfg, ["synthetic_voc_train"], is_train=True)
    train, val = split_dataset(dataset, 0.25, seed=7)
    train_ids = {train.image_id(i) for i in range(len(train))}
    val_ids = {val.image_id(i) for i in range(len(val))}
    assert (len(train), len(val)) == (9, 3) and not train_ids & val_ids
    assert train_ids | val_ids == set(range(len(dataset)))
    assert train.classes == val.classes == dataset.classes
    assert train.num_classes == dataset.num_classes
    again, other = split_dataset(dataset, 0.25, 7)[1], split_dataset(dataset, 0.25, 8)[1]
    assert val_ids == {again.image_id(i) for i in range(3)} != {other.image_id(i) for i in range(3)}
    assert val[0][1]["image_id"] == val.image_id(0)
    assert set(val.coco_gt().getImgIds()) == val_ids
    expected = sum(len(dataset.coco_gt().getAnnIds(imgIds=[i])) for i in val_ids)
    assert len(val.coco_gt().getAnnIds()) == expected
    assert all(len(images) == 2 for images, _ in make_train_loader(cfg, train))


def test_concat_renumbers_images_and_merges_ground_truth(cfg):
    both = build_dataset(cfg, ["synthetic_voc_val", "synthetic_coco_val"], is_train=False)
    voc = build_dataset(cfg, ["synthetic_voc_val"], is_train=False)
    assert len(both) == 10 and both.classes == voc.classes
    assert [both[i][1]["image_id"] for i in range(len(both))] == list(range(10))
    gt = both.coco_gt()
    assert sorted(gt.getImgIds()) == list(range(10))
    assert len(gt.getAnnIds()) == 2 * len(voc.coco_gt().getAnnIds())
    def boxes(coco, image_id):
        return sorted(tuple(a["bbox"]) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])))

    for i in (1, 6):
        assert boxes(gt, i) == boxes(voc.coco_gt(), i % 5)
    assert torch.equal(both[7][0], voc[2][0])


def test_concat_rejects_different_class_lists(cfg, tmp_path):
    (tmp_path / "other").mkdir()
    generate(tmp_path / "other", 2, 1, seed=0, min_size=48, max_size=64)
    classes = tmp_path / "other" / "synthetic_voc" / "classes.txt"
    classes.write_text(classes.read_text() + "extra\n")
    other = cfg.clone()
    other.DATASETS.REGISTER = (f"odd:voc:{tmp_path / 'other' / 'synthetic_voc'}:train",)
    with pytest.raises(DataError, match="different class lists"):
        build_dataset(other, ["synthetic_voc_train", "odd"], is_train=True)


def _rank_main(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = get_cfg_defaults()
    cfg.DATASETS.ROOT = root
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48,), 80
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 48, 80
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.TEST.IMS_PER_BATCH = 4, 3, 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    train = build_dataset(cfg, ["synthetic_voc_train"], is_train=True)
    train_ids = [t["image_id"] for _, targets in make_train_loader(cfg, train) for t in targets]
    test = build_dataset(cfg, ["synthetic_voc_val"], is_train=False)
    test_batches = [len(images) for images, _ in make_test_loader(cfg, test)]
    test_ids = [t["image_id"] for _, targets in make_test_loader(cfg, test) for t in targets]
    torch.save({"train": train_ids, "test": test_ids, "batches": test_batches, "n": len(test)},
               f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_real_gloo_ranks_share_generated_data_and_split_work(tmp_path):
    import torch.multiprocessing as mp

    root, out = tmp_path / "root", tmp_path / "result"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(root), str(out)), nprocs=2)
    results = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    assert all(len(r["train"]) == 3 * 2 for r in results)
    assert not set(results[0]["train"]) & set(results[1]["train"])  # 12 of 300 images: one epoch
    assert all(set(r["batches"]) <= {2, 1} for r in results)
    assert sorted(results[0]["test"] + results[1]["test"]) == list(range(results[0]["n"]))


def _perfect_ap(dataset) -> float:
    """COCO AP of detections equal to each test target mapped back to original pixels."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    results = []
    for index in range(len(dataset)):
        _, target = dataset[index]
        scale = (target["orig_size"] / target["size"]).flip(0).repeat(2)
        for box, label in zip((target["boxes"] * scale).tolist(), target["labels"].tolist()):
            results.append({"image_id": target["image_id"], "score": 1.0,
                            "category_id": dataset.label_to_category_id[label],
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    gt = dataset.coco_gt()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_targets_evaluate_perfectly_against_coco_gt(cfg):
    for names in (["synthetic_voc_val"], ["synthetic_coco_val"],
                  ["synthetic_voc_val", "synthetic_coco_val"]):
        ap = _perfect_ap(build_dataset(cfg, names, is_train=False))
        assert ap == pytest.approx(1.0, abs=1e-3)
    _, val = split_dataset(build_dataset(cfg, ["synthetic_voc_train"], is_train=False), 0.5, 0)
    assert _perfect_ap(val) == pytest.approx(1.0, abs=1e-3)


def test_train_sampler_errors():
    with pytest.raises(DataError, match=r"^the training set has 1 images, fewer than the 2 ranks"):
        TrainBatchSampler([0], 1, seed=0, world_size=2)
    with pytest.raises(ValueError, match=r"^TrainBatchSampler: batch_size must be >= 1, got 0$"):
        TrainBatchSampler([0, 0], 0, seed=0)
