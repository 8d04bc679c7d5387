"""How fast the demo's fine-tuning can learn: the demo model, optimizer and schedule trained from
scratch on Fashion-MNIST held in memory (no shards, no loader, one process), with the test accuracy
after every epoch: plain, with flip averaging, and of an EMA of the weights.

It isolates what the model and recipe can reach in N epochs from the pipeline's speed, so model and
recipe choices for `make demo` can be compared in minutes. Model, batch, optimizer and schedule are
those of `experiment=demo_finetune`, without its layer decay (meant for a pretrained start); model
settings override the demo's:

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
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from timm.utils import ModelEmaV3

import swinv2
from train.__main__ import CONFIG_DIR
from train.config import RunConfig, register_configs
from train.data.fashion_mnist import load_split
from train.optim import build_optimizer, build_scheduler


def demo_config() -> RunConfig:
    register_configs()
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        return OmegaConf.to_object(
            compose("config", overrides=["experiment=demo_finetune", "optim.layer_decay=null"])
        )


def load(split: str, pad: int, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split("", split)
    x = torch.from_numpy(np.pad(images, ((0, 0), (pad, pad), (pad, pad)))).float().div(255)
    x = x.sub(mean).div(std)[:, None].expand(-1, 3, -1, -1).contiguous()
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
    p.add_argument("--pad", type=int, default=2, help="pixels of black border around the 28 px images")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="model settings, e.g. depths=[2,2,4]")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = demo_config()
    kwargs = dict(cfg.model.overrides(), img_size=28 + 2 * args.pad, num_classes=10)
    for item in args.overrides:
        key, value = item.split("=", 1)
        kwargs[key] = ast.literal_eval(value)
    x_train, y_train = load("train", args.pad, cfg.data.mean[0], cfg.data.std[0])
    x_test, y_test = load("test", args.pad, cfg.data.mean[0], cfg.data.std[0])
    model = swinv2.build_model(cfg.model.name, **kwargs)
    batch = cfg.batch_size
    steps_per_epoch = len(x_train) // batch
    optimizer = build_optimizer(model, cfg.optim, total_batch=batch)
    scheduler = build_scheduler(optimizer, cfg.optim, total_batch=batch, steps_per_epoch=steps_per_epoch,
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
            idx = order[i * batch : (i + 1) * batch]
            x = x_train[idx]
            x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(-1), x)
            loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=cfg.data.aug.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
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
