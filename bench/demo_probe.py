"""How fast the demo's fine-tuning can learn: the demo model, augmentation, optimizer and schedule
trained from scratch on Fashion-MNIST held in memory (no shards, no loader, one process), with the
test accuracy after every epoch: plain, with flip averaging, and of an EMA of the weights.

It isolates what the model and recipe can reach in N epochs from the pipeline's speed, so model and
recipe choices for `make demo` can be compared in minutes. Model, batch, the pipeline's transforms,
optimizer and schedule are those of `experiment=demo_finetune`, without its layer decay (meant for a pretrained start); Hydra
overrides change them:

    .venv/bin/python bench/demo_probe.py --epochs 4
    .venv/bin/python bench/demo_probe.py --epochs 3 model.depths=[2,2,4]
    .venv/bin/python bench/demo_probe.py --epochs 2 batch_size=64 optim.base_lr=2e-3
    .venv/bin/python bench/demo_probe.py --epochs 2 data.aug.scale=[0.8,1]
    .venv/bin/python bench/demo_probe.py --epochs 3 --pad 0 model.patch_size=2 model.embed_dim=32 \
        model.depths=[2,2] model.num_heads=[1,2] model.window_size=7
"""

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3

import swinv2
from train.__main__ import CONFIG_DIR
from train.config import RunConfig, register_configs
from train.data.fashion_mnist import load_split
from train.data.transforms import build_transform
from train.optim import build_optimizer, build_scheduler


def demo_config(overrides: list[str]) -> RunConfig:
    register_configs()
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=["experiment=demo_finetune", "optim.layer_decay=null", *overrides])
        return OmegaConf.to_object(cfg)


def load(split: str, pad: int) -> tuple[np.ndarray, torch.Tensor]:
    """(N, 28 + 2 pad, 28 + 2 pad, 3) uint8 images, as the shards hold them, and their labels."""
    images, labels = load_split("", split)
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    return np.repeat(images[..., None], 3, axis=-1), torch.from_numpy(labels)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, flip_average: bool = False) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 500):
        probs = model(x[i : i + 500]).softmax(1)
        if flip_average:
            probs += model(x[i : i + 500].flip(-1)).softmax(1)
        correct += int((probs.argmax(1) == y[i : i + 500]).sum())
    model.train()
    return 100 * correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--pad", type=int, default=2, help="pixels of black border around the 28 px images")
    p.add_argument("--size", type=int, default=None, help="model input size (default: 28 + 2 pad)")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.depths=[2,2,4] batch_size=64")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = demo_config(args.overrides)
    kwargs = dict(cfg.model.overrides(), img_size=args.size or 28 + 2 * args.pad, num_classes=10)
    images, y_train = load("train", args.pad)
    train_transform = build_transform("supervised", kwargs["img_size"], cfg.data.aug, cfg.data)
    test_images, y_test = load("test", args.pad)
    test_transform = build_transform("eval", kwargs["img_size"], cfg.data.aug, cfg.data)
    x_test = test_transform.collate([test_transform(image, 0) for image in test_images])
    model = swinv2.build_model(cfg.model.name, **kwargs)
    batch = cfg.batch_size
    steps_per_epoch = len(images) // batch
    optimizer = build_optimizer(model, cfg.optim, total_batch=batch)
    scheduler = build_scheduler(optimizer, cfg.optim, total_batch=batch, steps_per_epoch=steps_per_epoch,
                                epochs=args.epochs)  # fmt: skip
    ema = ModelEmaV3(model, decay=args.ema)
    total = int(args.epochs * steps_per_epoch)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {kwargs}")
    step, train_time = 0, 0.0
    for epoch in range(math.ceil(args.epochs)):
        start, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        order = torch.randperm(len(images)).tolist()
        for i in range(steps_per_epoch):
            if step == total:
                break
            idx = order[i * batch : (i + 1) * batch]
            x = train_transform.collate(
                [train_transform(images[k], step * batch + j) for j, k in enumerate(idx)]
            )
            logits = model(x)
            loss = F.cross_entropy(logits, y_train[idx], label_smoothing=cfg.data.aug.label_smoothing)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y_train[idx]).sum())
            seen += len(idx)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            ema.update(model, step=step)
        train_time += time.perf_counter() - start
        print(f"epoch {epoch}: {train_time:.0f} s of training, train loss {loss_sum / seen:.3f} "
              f"top-1 {100 * correct / seen:.2f}%, test top-1 {accuracy(model, x_test, y_test):.2f}%, "
              f"with flip averaging {accuracy(model, x_test, y_test, True):.2f}%, "
              f"EMA {accuracy(ema.module, x_test, y_test):.2f}%", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
