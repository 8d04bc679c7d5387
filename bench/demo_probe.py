"""How fast the demo's fine-tuning can learn: the demo model, optimizer and schedule trained from
scratch on Fashion-MNIST held in memory (no shards, no loader, one process), with the test accuracy
after every epoch: plain, with flip averaging, and of an EMA of the weights.

It isolates what the model and recipe can reach in N epochs from the pipeline's speed, so model and
recipe choices for `make demo` can be compared in minutes. Model settings override the demo's:

    .venv/bin/python bench/demo_probe.py --epochs 4
    .venv/bin/python bench/demo_probe.py --epochs 3 depths=[2,2,4]
    .venv/bin/python bench/demo_probe.py --epochs 3 --pad 0 patch_size=2 embed_dim=32 depths=[2,2] num_heads=[1,2] window_size=7
"""

import argparse
import ast
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

import swinv2
from train.config import OptimConfig
from train.data.fashion_mnist import MEAN, STD, load_split
from train.optim import build_optimizer, build_scheduler

# configs/experiment/demo_model.yaml and demo_finetune.yaml
DEMO_MODEL = dict(
    patch_size=4, embed_dim=48, depths=[2, 2, 2], num_heads=[2, 4, 8], window_size=4, drop_path_rate=0.0
)


def load(split: str, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split("", split)
    x = torch.from_numpy(np.pad(images, ((0, 0), (pad, pad), (pad, pad)))).float().div(255)
    x = x.sub(MEAN[0]).div(STD[0])[:, None].expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(labels)


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
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--pad", type=int, default=2, help="pixels of black border around the 28 px images")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="model settings, e.g. depths=[2,2,4]")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = dict(DEMO_MODEL, img_size=28 + 2 * args.pad, num_classes=10)
    for item in args.overrides:
        key, value = item.split("=", 1)
        kwargs[key] = ast.literal_eval(value)
    x_train, y_train = load("train", args.pad)
    x_test, y_test = load("test", args.pad)
    model = swinv2.build_model("swinv2_tiny_window8_256", **kwargs)
    cfg = OptimConfig(base_lr=args.lr, scale_lr=False, warmup_epochs=0.1, min_lr=1e-5, weight_decay=0.05)
    steps_per_epoch = len(x_train) // args.batch
    optimizer = build_optimizer(model, cfg, total_batch=args.batch)
    scheduler = build_scheduler(optimizer, cfg, total_batch=args.batch, steps_per_epoch=steps_per_epoch,
                                epochs=args.epochs)  # fmt: skip
    ema = ModelEmaV3(model, decay=args.ema)
    total = int(args.epochs * steps_per_epoch)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {kwargs}")
    step, train_time = 0, 0.0
    for epoch in range(math.ceil(args.epochs)):
        start = time.perf_counter()
        order = torch.randperm(len(x_train))
        for i in range(steps_per_epoch):
            if step == total:
                break
            idx = order[i * args.batch : (i + 1) * args.batch]
            x = x_train[idx]
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=args.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            ema.update(model, step=step)
        train_time += time.perf_counter() - start
        print(f"epoch {epoch}: {train_time:.0f} s of training, test top-1 {accuracy(model, x_test, y_test):.2f}%, "
              f"with flip averaging {accuracy(model, x_test, y_test, True):.2f}%, "
              f"EMA {accuracy(ema.module, x_test, y_test):.2f}%", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
