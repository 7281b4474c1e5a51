"""`heronsfl attack inversion RUN_DIR --out DIR`: what the main server can see of a run.

The attacker is the honest-but-curious main server of the run in RUN_DIR. It holds:
- the global client sub-model of a round (checkpoint.pt, or client_rounds/ when the run kept
  them: `privacy.keep_client_rounds = true`), as the Fed-Server broadcasts it;
- the run's config (the architecture, the cut and the defenses' settings);
- its own images: half of the test split (seeded), disjoint from every client's training data.

The victims are clients' training images. Their activations are computed as a client uploads
them: the client model in training mode (batch statistics) on batches of `train.batch_size`,
then the run's defenses (clip, noise), then the wire precision. Augmentation is left out, so the
reconstruction target is the stored image.

Results (--out): inversion.json (written last: its presence marks a complete result) and one
reconstructions_round_NNNN.png per round evaluated: originals, decoder reconstructions,
UnSplit reconstructions (checkpoint round only) and the attacker's mean image.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor, nn

from heronsfl.algorithms import get_algorithm
from heronsfl.algorithms.base import WIRE_DTYPES, SplitAlgorithm, head_loss
from heronsfl.config import RunConfig
from heronsfl.errors import ConfigError, UserError
from heronsfl.metrics.log import (
    CHECKPOINT_FILE,
    CLIENT_ROUNDS_DIR,
    CONFIG_FILE,
    client_round_path,
    read_metrics,
    write_json_atomic,
)
from heronsfl.models.split import SplitModel
from heronsfl.privacy.defenses import clip_and_noise
from heronsfl.privacy.inversion import build_decoder, decode, train_decoder, unsplit
from heronsfl.privacy.labels import gradient_label_inference, label_exposure
from heronsfl.registry import load_config
from heronsfl.rng import derive_seed, generator, numpy_rng

log = logging.getLogger(__name__)

RESULT_FILE = "inversion.json"


class _Parser(argparse.ArgumentParser):
    """Bad flags end like every other user error: one `heronsfl: error:` line, status 2."""

    def error(self, message: str) -> NoReturn:  # argparse's hook
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


# ---------------------------------------------------------------------------- the run


def _load_run(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    if not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir} holds no {CONFIG_FILE}: give a `heronsfl run --out` directory")
    try:
        cfg = load_config(run_dir / CONFIG_FILE)
    except ConfigError as e:
        raise UserError(f"{run_dir / CONFIG_FILE} is not a valid config: {e}") from None
    algo = get_algorithm(cfg.algorithm)
    if not algo.uploads_activations:
        raise UserError(
            f"{run_dir} is a {cfg.algorithm!r} run: it has no cut and uploads no activations, so "
            "the server has nothing to invert; attack a split algorithm's run (heron-sfl, "
            "cse-fsl, sflv2, ...)"
        )
    from heronsfl.tasks import get_task

    if len(get_task(cfg.task).input_shape) != 3:
        raise UserError(f"inversion needs an image task; {cfg.task!r} is not one")
    ckpt = run_dir / CHECKPOINT_FILE
    if not ckpt.is_file():
        raise UserError(
            f"{run_dir} has no {CHECKPOINT_FILE}: the run has not completed a round yet; "
            "wait for (or resume) it with `heronsfl run`"
        )
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # torn or foreign file
        raise UserError(f"{ckpt} is unreadable ({type(e).__name__})") from None
    return cfg, state


def _client_state(run_dir: Path, round_idx: int, ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """The global client sub-model after `round_idx`: from client_rounds/, or the checkpoint."""
    path = client_round_path(run_dir, round_idx)
    if path.is_file():
        state: dict[str, Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    elif round_idx == int(ckpt["round"]):
        state = ckpt["global_state"]
    else:
        kept = sorted(int(p.stem.split("_")[1]) for p in (run_dir / CLIENT_ROUNDS_DIR).glob("*.pt"))
        raise UserError(
            f"round {round_idx} of {run_dir} is not available: the checkpoint holds round "
            f"{int(ckpt['round'])}"
            + (f" and client_rounds/ holds {kept}" if kept else "")
            + "; run with privacy.keep_client_rounds=true to keep every round"
        )
    n = len("client.")
    return {k[n:]: v.float() for k, v in state.items() if k.startswith("client.")}


def _available_rounds(run_dir: Path, ckpt: dict[str, Any]) -> list[int]:
    kept = {int(p.stem.split("_")[1]) for p in (run_dir / CLIENT_ROUNDS_DIR).glob("round_*.pt")}
    return sorted(kept | {int(ckpt["round"])})


def _parse_rounds(text: str | None, run_dir: Path, ckpt: dict[str, Any]) -> list[int]:
    if text is None:
        return [int(ckpt["round"])]
    if text == "all":
        return _available_rounds(run_dir, ckpt)
    try:
        rounds = sorted({int(r) for r in text.split(",") if r.strip()})
    except ValueError:
        raise UserError(f"--rounds {text!r}: give comma-separated round numbers or 'all'") from None
    if not rounds or min(rounds) < 0:
        raise UserError(f"--rounds {text!r}: give round numbers >= 0 or 'all'")
    return rounds


# ---------------------------------------------------------------------------- activations


def _pixels(x_uint8: Tensor) -> Tensor:
    return x_uint8.float() / 255.0  # (N, C, H, W) in [0, 1]


@torch.no_grad()
def uploaded_activations(
    client: nn.Module, cfg: RunConfig, x: Tensor, to_input: Any, noise_seed: int | None
) -> Tensor:
    """Activations of pixels x (N, C, H, W) as a client uploads them: training-mode forward on
    batches of train.batch_size, the run's clip (and noise, when `noise_seed` is given), wire
    precision. Returns fp32 (N, *cut_shape)."""
    client.train()  # batch statistics, as in every client forward; running stats are unused here
    pv = cfg.privacy
    gen = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    out = []
    for chunk in x.split(cfg.train.batch_size):
        z = client(to_input(chunk))
        z = clip_and_noise(z, pv.clip_norm, pv.noise_std if gen is not None else 0.0, gen)
        out.append(z.to(WIRE_DTYPES[cfg.comm.wire_dtype]).float())
    return torch.cat(out)


def _metrics(originals: Tensor, recon: Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images, pixels in [0, 1] (scikit-image)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    o, r = originals.double().numpy(), recon.double().clamp(0, 1).numpy()
    psnr = [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(o, r, strict=True)]
    ssim = [
        structural_similarity(a, b, data_range=1.0, channel_axis=0)
        for a, b in zip(o, r, strict=True)
    ]
    psnr_arr = np.minimum(np.array(psnr), 100.0)  # an exact copy has infinite PSNR
    return {
        "psnr": float(psnr_arr.mean()),
        "psnr_std": float(psnr_arr.std()),
        "ssim": float(np.mean(ssim)),
        "ssim_std": float(np.std(ssim)),
    }


def _save_grid(path: Path, rows: list[tuple[str, Tensor]], title: str) -> None:
    """A PNG of images (one row per method, one column per image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.25 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(cols):
            ax = axes[i][j]
            img = imgs[j].clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, C)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- the attack


def run_attack(
    run_dir: str | Path,
    out: str | Path,
    rounds: str | None = None,
    images: int = 256,
    decoder_steps: int = 300,
    decoder_width: int = 32,
    unsplit_steps: int = 300,
    unsplit_images: int = 16,
    show: int = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The attack on one run directory; writes `out` and returns what inversion.json holds."""
    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    cfg, ckpt = _load_run(run_dir)
    round_list = _parse_rounds(rounds, run_dir, ckpt)
    client_states = {r: _client_state(run_dir, r, ckpt) for r in round_list}  # checks rounds
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; choose another --out or pass --overwrite")
    if images < 2 or show < 1:
        raise UserError("--images must be >= 2 and --show >= 1")
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    for stale in out.glob("reconstructions_round_*.png"):
        stale.unlink()

    from heronsfl.engines.simulation import client_partitions
    from heronsfl.tasks import build_split_model, get_task, load_datasets

    task = get_task(cfg.task)
    algo = get_algorithm(cfg.algorithm)
    model = build_split_model(cfg, with_aux=False)
    c_in = task.input_shape[0]

    def to_input(pixels: Tensor) -> Tensor:  # [0, 1] -> the model's normalized input
        if task.normalize is None:
            return pixels
        mean = torch.tensor(task.normalize.mean).view(1, c_in, 1, 1)
        std = torch.tensor(task.normalize.std).view(1, c_in, 1, 1)
        return (pixels - mean) / std

    # Attacker: half of the test split. Victims: clients' training images (seeded sample).
    test = load_datasets(cfg, "test")
    perm = torch.randperm(len(test), generator=generator(seed, "attack", "attacker"))
    attacker_x = _pixels(test.x[perm[: len(test) // 2]])
    train = load_datasets(cfg, "train")
    owned = np.concatenate(client_partitions(cfg, train))
    # In random order: the victims' batches mix classes as the clients' IID batches do (batch
    # statistics shape the activations), and the PNG shows a varied sample.
    pick = numpy_rng(seed, "attack", "victims").permutation(owned)[: min(images, len(owned))]
    victim_x, victim_y = _pixels(train.x[pick]), train.y[pick]
    mean_image = attacker_x.mean(0, keepdim=True).expand_as(victim_x)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "algorithm": cfg.algorithm,
        "task": cfg.task,
        "cut": model.cut,
        "cut_shape": list(model.cut_shape),
        "zeroth_order_client": algo.zeroth_order_client,
        "freeze_client": cfg.model.freeze_client,
        "privacy": {
            "noise_std": cfg.privacy.noise_std,
            "clip_norm": cfg.privacy.clip_norm,
            "nopeek_weight": cfg.privacy.nopeek_weight,
        },
        "checkpoint_round": int(ckpt["round"]),
        "run_test_accuracy": _last_accuracy(run_dir),
        "attacker_images": len(attacker_x),
        "attacker_data": "half of the test split (disjoint from the clients' training data)",
        "victim_images": len(victim_x),
        "decoder_steps": decoder_steps,
        "decoder_width": decoder_width,
        "baseline_mean_image": _metrics(victim_x, mean_image),
        "rounds": [],
    }
    noisy = cfg.privacy.noise_std > 0
    pv = cfg.privacy
    for r in round_list:
        log.info("attacking round %d of %s", r, run_dir)
        client = copy.deepcopy(model.client)
        client.load_state_dict(client_states[r])  # strict: every weight is the run's
        client.requires_grad_(False)
        victim_z = uploaded_activations(
            client, cfg, victim_x, to_input, derive_seed(seed, "victim-noise", r) if noisy else None
        )
        attacker_z = uploaded_activations(client, cfg, attacker_x, to_input, None)  # clipped
        gen = generator(seed, "attack", "decoder", r)
        noise_gen = generator(seed, "attack", "decoder-noise", r)

        def noise(z: Tensor, g: torch.Generator = noise_gen) -> Tensor:
            return clip_and_noise(z, 0.0, pv.noise_std, g)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "attack", "decoder-init"))
            decoder = build_decoder(model.cut_shape, task.input_shape, decoder_width)
        losses = train_decoder(
            decoder, attacker_z, attacker_x, decoder_steps, gen, noise if noisy else None
        )
        recon = decode(decoder, victim_z)
        entry: dict[str, Any] = {
            "round": r,
            "decoder": _metrics(victim_x, recon),
            "decoder_final_train_mse": float(np.mean(losses[-20:])) if losses else None,
        }
        rows = [("original", victim_x[:show]), ("decoder", recon[:show])]
        if unsplit_steps > 0 and r == round_list[-1]:
            k = min(unsplit_images, len(victim_x))
            with torch.random.fork_rng(devices=[]):
                # The attacker's own random weights: another seed than the run's.
                torch.manual_seed(derive_seed(seed, "attack", "unsplit-init"))
                guess_model = copy.deepcopy(model.client)
                for m in guess_model.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
            guess_model.requires_grad_(True)
            target = uploaded_activations(
                client,
                cfg,
                victim_x[:k],
                to_input,
                derive_seed(seed, "unsplit-noise", r) if noisy else None,
            )
            rec_u = unsplit(
                guess_model,
                target,
                task.input_shape,
                to_input,
                unsplit_steps,
                generator(seed, "attack", "unsplit"),
            )
            entry["unsplit"] = {
                **_metrics(victim_x[:k], rec_u),
                "images": k,
                "steps": unsplit_steps,
                "baseline_mean_image": _metrics(victim_x[:k], mean_image[:k]),
            }
            rows.append(("UnSplit", torch.cat([rec_u, mean_image[: max(0, show - k)]])[:show]))
        rows.append(("mean image", mean_image[:show]))
        png = out / f"reconstructions_round_{r:04d}.png"
        d = entry["decoder"]
        _save_grid(
            png,
            rows,
            f"{cfg.algorithm} on {cfg.task}, cut {model.cut}, round {r}: "
            f"decoder PSNR {d['psnr']:.1f} dB, SSIM {d['ssim']:.2f}",
        )
        entry["png"] = png.name
        result["rounds"].append(entry)

    # Labels: the checkpoint round's client and server, which the server held together.
    client = copy.deepcopy(model.client)
    client.load_state_dict(_client_state(run_dir, int(ckpt["round"]), ckpt))
    result["labels"] = _labels(cfg, ckpt, algo, model, client, victim_x, victim_y, to_input, seed)
    result["label_exposure"] = label_exposure()
    result["wall_s"] = time.perf_counter() - t0
    write_json_atomic(out / RESULT_FILE, result)
    return result


def _last_accuracy(run_dir: Path) -> float | None:
    try:
        records = read_metrics(run_dir)
    except (OSError, json.JSONDecodeError):
        return None
    acc = [r["test/accuracy"] for r in records if "test/accuracy" in r]
    return acc[-1] if acc else None


def _labels(
    cfg: RunConfig,
    ckpt: dict[str, Any],
    algo: type[SplitAlgorithm],
    model: SplitModel,
    client: nn.Module,
    x: Tensor,
    y: Tensor,
    to_input: Any,
    seed: int,
) -> dict[str, Any]:
    """Labels: in the clear for every split algorithm; for one that returns cut gradients, how
    well those gradients alone give the labels away (checkpoint round's models)."""
    out: dict[str, Any] = {"uploaded_in_clear": bool(algo.uploads_activations)}
    if not algo.sends_gradients:
        out["gradient_inference"] = None
        return out
    server = copy.deepcopy(model.server)
    server.load_state_dict(ckpt["server_model"])
    server.train()  # as during training (batch statistics)
    noisy = cfg.privacy.noise_std > 0
    z = uploaded_activations(
        client, cfg, x, to_input, derive_seed(seed, "label-noise") if noisy else None
    )
    wire = WIRE_DTYPES[cfg.comm.wire_dtype]
    grads = []
    for zb, yb in zip(z.split(cfg.train.batch_size), y.split(cfg.train.batch_size), strict=True):
        zb = zb.clone().requires_grad_(True)
        head_loss(server, zb, yb).backward()  # the mean loss, as the server's step computes
        assert zb.grad is not None, "the server forward reaches the activations"
        grads.append(zb.grad.to(wire).float())  # as it travels
    num_classes = int(y.max()) + 1
    out["gradient_inference"] = gradient_label_inference(torch.cat(grads), y, num_classes, seed)
    return out


# ---------------------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    p = _Parser(prog="heronsfl attack", description="Privacy attacks on a finished run.")
    sub = p.add_subparsers(dest="attack", required=True, parser_class=_Parser)
    inv = sub.add_parser(
        "inversion",
        help="reconstruct clients' images from their uploaded activations",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    inv.add_argument("run_dir", metavar="RUN_DIR", help="a `heronsfl run --out` directory")
    inv.add_argument("--out", required=True, help="where inversion.json and the PNGs go")
    inv.add_argument(
        "--rounds",
        help="rounds to attack: comma-separated, or 'all' kept ones (default: the checkpoint's)",
    )
    inv.add_argument("--images", type=_positive, default=256, help="victim images (default 256)")
    inv.add_argument("--decoder-steps", type=_positive, default=300, help="decoder Adam steps")
    inv.add_argument(
        "--decoder-width", type=_positive, default=32, help="decoder channels at the cut"
    )
    inv.add_argument(
        "--unsplit-steps", type=_positive, default=300, help="UnSplit steps (0 = skip it)"
    )
    inv.add_argument("--unsplit-images", type=_positive, default=16, help="images UnSplit inverts")
    inv.add_argument("--show", type=_positive, default=8, help="images per row of the PNG")
    inv.add_argument("--seed", type=_positive, default=0, help="the attacker's seed")
    inv.add_argument("--overwrite", action="store_true", help="replace results in --out")
    ns = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
        import skimage  # noqa: F401
    except ModuleNotFoundError as e:
        raise UserError(f"heronsfl attack needs {e.name!r}: pip install -e '.[privacy]'") from None
    res = run_attack(
        ns.run_dir,
        ns.out,
        rounds=ns.rounds,
        images=ns.images,
        decoder_steps=ns.decoder_steps,
        decoder_width=ns.decoder_width,
        unsplit_steps=ns.unsplit_steps,
        unsplit_images=ns.unsplit_images,
        show=ns.show,
        seed=ns.seed,
        overwrite=ns.overwrite,
    )
    print(format_result(res))
    return 0


def format_result(res: dict[str, Any]) -> str:
    """A few lines for the terminal; the JSON has everything."""
    b = res["baseline_mean_image"]
    lines = [
        f"{res['algorithm']} on {res['task']} (cut {res['cut']}), test acc "
        f"{res['run_test_accuracy']}: mean-image baseline PSNR {b['psnr']:.2f} dB, "
        f"SSIM {b['ssim']:.3f}"
    ]
    for e in res["rounds"]:
        d = e["decoder"]
        line = f"  round {e['round']}: decoder PSNR {d['psnr']:.2f} dB, SSIM {d['ssim']:.3f}"
        if "unsplit" in e:
            u = e["unsplit"]
            line += f"; UnSplit PSNR {u['psnr']:.2f} dB, SSIM {u['ssim']:.3f}"
        lines.append(line)
    g = res["labels"].get("gradient_inference")
    lab = "labels uploaded in the clear" if res["labels"]["uploaded_in_clear"] else "no labels"
    if g is not None:
        lab += (
            f"; from returned gradients alone: anchor accuracy {g['anchor_accuracy']:.3f}, "
            f"cluster accuracy {g['cluster_accuracy']:.3f} (chance {g['chance']:.3f})"
        )
    lines.append("  " + lab)
    return "\n".join(lines)
