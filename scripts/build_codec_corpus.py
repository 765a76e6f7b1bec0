"""Build the image codec's training corpus: photographs carried by Debian's desktop-background packages.

    python scripts/build_codec_corpus.py --out DIR [--manifest training/imagecodec/corpus.json] [--refresh]

Build (default): `apt-get download` every package of the manifest at its pinned version, extract it with
`dpkg-deb -x` into a scratch folder (nothing is installed), check each selected file's SHA-256 against the
manifest and copy the original bytes (JPEG and PNG as they are, no re-encoding) to `DIR/train/` or
`DIR/heldout/` under the entry's `name`; the manifest is copied to `DIR/corpus.json`.

`--refresh`: download the newest versions of PACKAGES, scan every raster image under their wallpaper folders,
select the photographs and rewrite the manifest. Selection, in order:
1. raster only (SVG and other vector files are never candidates), no symlinks (Plasma links one picture to a
   dozen resolutions), no previews/screenshots, short side >= MIN_SIDE;
2. objective checks on a 768 px copy: fewer than MIN_COLOURS distinct colours or more than MAX_FLAT of the 8x8
   blocks flat (std < 0.5 grey levels) -> artwork (flat fills, gradients, vector art);
3. the visual review (REVIEWED below: each remaining file was looked at; it overrides 4) or, for files not
   reviewed, EXIF camera make/model -> photograph; anything else is left out as "unreviewed" (look at it and
   add it to REVIEWED);
4. duplicates (the same picture at several resolutions, by difference hash, or the same bytes): the largest;
5. licence and copyright holder from the package's machine-readable `usr/share/doc/<pkg>/copyright` (the last
   `Files:` stanza whose pattern matches the path's tail); the author from a Plasma wallpaper's
   metadata.json or the EXIF Artist when the stanza names a team;
6. split: held-out = the HELDOUT_FRACTION of all photographs with the smallest SHA-256 among those at least
   768x512 in landscape (so each centre-crops to Kodak's size), the rest train.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from families.manifest import sha256_file  # noqa: E402

DEFAULT_MANIFEST = ROOT / "training" / "imagecodec" / "corpus.json"
PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds", "lxqt-themes", "lomiri-wallpapers-16.04",
            "lomiri-wallpapers-20.04", "lomiri-wallpapers", "ukui-wallpapers", "gnome-backgrounds", "desktop-base",
            "sway-backgrounds")
WALLPAPER_DIRS = ("usr/share/backgrounds/", "usr/share/wallpapers/", "usr/share/lxqt/wallpapers/",
                  "usr/share/desktop-base/")
RASTER = {".jpg", ".jpeg", ".png", ".webp"}
MIN_SIDE = 512
MIN_COLOURS = 5000
MIN_GREY_LEVELS = 128  # a black-and-white photograph has few colours: its grey levels are counted instead
MAX_FLAT = 0.6
HELDOUT_FRACTION = 0.22
HELDOUT_MIN = (768, 512)
DUPLICATE_DIFF = 6.0  # 16x16 grey thumbnails (same aspect ratio) this close (mean |diff|) are one picture

# The visual review (thumbnails and 1:1 crops looked at on 2026-12-03). "photo": a photograph; anything else
# is the reason it is left out. Keys: "package:path inside the package".
_P = "plasma-workspace-wallpapers:usr/share/wallpapers/{}/contents/images/{}"
_M = "mate-backgrounds:usr/share/backgrounds/mate/{}"
_L = "lxqt-themes:usr/share/lxqt/wallpapers/{}"
_U16 = "lomiri-wallpapers-16.04:usr/share/backgrounds/{}"
_U20 = "lomiri-wallpapers-20.04:usr/share/backgrounds/{}"
_UK = "ukui-wallpapers:usr/share/backgrounds/{}"
PHOTO = "photo"
REVIEWED: dict[str, str] = {
    # photographs without camera EXIF (the reviewed ones with EXIF need no entry)
    **{_U16.format(f): PHOTO for f in (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg")},
    _U20.format("Kleiber_by_Lukas_Baubkus.jpg"): PHOTO,
    **{_L.format(f): PHOTO for f in ("Butterfly-Kenneth-Wimer.jpg", "cloud.png")},
    **{_M.format("nature/" + f): PHOTO for f in (
        "Aqua.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg", "RainDrops.jpg",
        "TwoWings.jpg", "YellowFlower.jpg")},
    **{_P.format(d, "2560x1600.jpg"): PHOTO for d in ("EveningGlow", "Grey", "summer_1am")},
    # left out after looking
    **{_M.format(f): "artwork: a painting (photographed, but the content is painted)" for f in (
        "abstract/Elephants.jpg", "abstract/Elephants_3840x2160.jpg", "abstract/Elephants_5640x3172.jpg")},
    **{_M.format(f"desktop/Ubuntu-Mate-{v}-no-logo.png"): "artwork: blurred colour field"
       for v in ("Cold", "Radioactive", "Warm", "Dark")},
    _M.format("desktop/Float-into-MATE.png"): "artwork: vector shapes",
    _M.format("desktop/Stripes.png"): "artwork: rendered stripes",
    _M.format("abstract/Gulp.png"): "artwork: gradient with grain",
    _U16.format("umang_by_Abhishek_Mudgal.jpg"): "artwork: rendered colour gradient",
    "desktop-base:usr/share/desktop-base/softwaves-theme/grub/grub-16x9.png": "artwork: Debian theme (vector)",
    _U20.format("Infinite-Sea_by_Aury88.jpg"): "artwork: composite with rendered polygons and stars",
    _U20.format("Fossa_by_Jasper_Roks.jpg"): "artwork: vector shapes",
    **{_L.format(f): "artwork: rendered shapes / logo" for f in (
        "kde-plasma.png", "plasma-logo-bright.png", "plasma-logo-dark.png", "plasma_arch.png", "triangles-logo.png",
        "triangles.png", "waves-logo.png", "waves-purple-logo.jpg", "simple_blue_widescreen.png")},
    **{_P.format(d, f): "artwork: rendered / vector (KDE artwork)" for d, f in (
        ("Altai", "5120x2880.png"), ("Altai", "1080x1920.png"), ("Autumn", "2560x1600.jpg"),
        ("Canopee", "3840x2160.png"), ("Cascade", "3840x2160.png"), ("Cluster", "3840x2160.png"),
        ("Elarun", "2560x1600.png"), ("Flow", "5120x2880.jpg"), ("Flow", "720x1440.jpg"),
        ("FlyingKonqui", "2560x1600.png"), ("Honeywave", "5120x2880.jpg"), ("Honeywave", "1080x1920.jpg"),
        ("IceCold", "5120x2880.png"), ("Kay", "5120x2880.png"), ("Kay", "1080x1920.png"),
        ("Kokkini", "3840x2160.png"), ("MilkyWay", "5120x2880.png"), ("MilkyWay", "1080x1920.png"),
        ("Opal", "3840x2160.png"), ("PastelHills", "3200x2000.jpg"), ("Patak", "5120x2880.png"),
        ("Patak", "1080x1920.png"),
        ("SafeLanding", "5120x2880.jpg"), ("SafeLanding", "1622x2880.jpg"), ("Shell", "5120x2880.jpg"),
        ("Shell", "720x1440.jpg"), ("Volna", "5120x2880.jpg"))},
    **{f"plasma-workspace-wallpapers:usr/share/wallpapers/{d}/contents/images_dark/{f}": "artwork: rendered / vector"
       for d, f in (("Flow", "5120x2880.jpg"), ("Flow", "720x1440.jpg"), ("Kay", "5120x2880.png"),
                    ("Kay", "1080x1920.png"), ("Patak", "3840x2160.png"))},
    **{_UK.format(f): "artwork: rendered / vector" for f in (
        "2004default.jpg", "fluent-color.png", "goldfish.png", "rhythm.jpg", "string.jpg", "calla.png",
        "the-mouse.jpg", "focal-ubuntukylin.png", "firstgeneration.jpg")},
    **{f"gnome-backgrounds:usr/share/backgrounds/gnome/{n}-{s}.webp": "artwork: rendered (GNOME)"
       for n in ("adwaita", "grid", "licorice", "pixels", "symbolic", "truchet", "wood") for s in "dl"},
}


# ---- packages ---------------------------------------------------------------------------------------------

def run(cmd: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def candidate_version(package: str) -> str:
    out = run(["apt-cache", "policy", package])
    match = re.search(r"Candidate:\s*(\S+)", out)
    if not match or match.group(1) == "(none)":
        raise SystemExit(f"{package}: not known to apt (run apt-get update)")
    return match.group(1)


def fetch(package: str, version: str, debs: Path, scratch: Path) -> Path:
    """apt-get download package=version into `debs` (kept as a cache) and extract it under `scratch`."""
    debs.mkdir(parents=True, exist_ok=True)
    found = [p for p in debs.glob(f"{package}_*.deb") if _deb_version(p) == version]
    if not found:
        try:
            run(["apt-get", "download", f"{package}={version}"], cwd=debs)
        except subprocess.CalledProcessError as error:
            raise SystemExit(f"apt-get download {package}={version} failed ({error.stderr.strip()}); the mirror "
                             "may have moved on: --refresh pins the current versions") from error
        found = [p for p in debs.glob(f"{package}_*.deb") if _deb_version(p) == version]
    target = scratch / package
    if not target.exists():
        run(["dpkg-deb", "-x", str(found[0]), str(target)])
    return target


def _deb_version(path: Path) -> str:
    return run(["dpkg-deb", "-f", str(path), "Version"]).strip()


# ---- debian/copyright -------------------------------------------------------------------------------------

def copyright_stanzas(text: str) -> list[dict[str, str]]:
    """The paragraphs of a DEP-5 copyright file, continuation lines joined with newlines."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                key = name.strip()
                fields[key] = value.strip()
        if "Files" in fields:
            stanzas.append(fields)
    return stanzas


def licence_of(stanzas: list[dict[str, str]], path: str) -> tuple[str, str]:
    """(licence short name, copyright holders) of the last stanza matching the installed path's tail."""
    best = None
    for stanza in stanzas:
        for pattern in stanza["Files"].split():
            name = pattern.rsplit("/", 1)[-1]
            if pattern == "*" or fnmatch.fnmatchcase(path, "*/" + pattern) or \
                    fnmatch.fnmatchcase(Path(path).name, pattern) or \
                    (not any(c in name for c in "*?[") and Path(path).name == name):  # installed elsewhere
                best = stanza
    if best is None:
        return "", ""
    holders = "; ".join(line.strip().rstrip("´").strip() for line in best.get("Copyright", "").splitlines() if line)
    return best.get("License", "").splitlines()[0] if best.get("License") else "", holders


def plasma_author(package_root: Path, path: str) -> str | None:
    parts = Path(path).parts
    if "wallpapers" not in parts or "contents" not in parts:
        return None
    meta = package_root.joinpath(*parts[:parts.index("contents")]) / "metadata.json"
    try:
        authors = json.loads(meta.read_text())["KPlugin"]["Authors"]
    except (OSError, KeyError, ValueError):
        return None
    return ", ".join(a["Name"] for a in authors if a.get("Name")) or None


# ---- image checks -----------------------------------------------------------------------------------------

def image_facts(path: Path) -> dict[str, Any]:
    """Size, EXIF camera and the statistics the selection uses (on a copy whose long side is 768)."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with warnings.catch_warnings(), Image.open(path) as img:
        warnings.simplefilter("ignore")  # palette PNGs with transparency
        exif = img.getexif()
        width, height = img.size
        img.draft("RGB", (1024, 1024))
        rgb = img.convert("RGB")
    scale = 768 / max(rgb.size)
    small = rgb.resize((max(8, round(rgb.size[0] * scale)), max(8, round(rgb.size[1] * scale))), Image.BILINEAR)
    pixels = np.asarray(small)
    flat_rgb = pixels.reshape(-1, 3).astype(np.int64)
    colours = len(np.unique(flat_rgb[:, 0] << 16 | flat_rgb[:, 1] << 8 | flat_rgb[:, 2]))
    grey = pixels.astype(np.float32).mean(axis=2)
    h, w = grey.shape[0] // 8 * 8, grey.shape[1] // 8 * 8
    flat = float((grey[:h, :w].reshape(h // 8, 8, w // 8, 8).std(axis=(1, 3)) < 0.5).mean())
    spread = pixels.max(axis=2).astype(np.int16) - pixels.min(axis=2)
    grey_image = bool((spread <= 2).mean() >= 0.99)
    thumb = np.asarray(small.convert("L").resize((16, 16), Image.BOX), dtype=np.uint8)
    camera = " ".join(str(exif.get(tag, "")).strip(" \x00") for tag in (0x010F, 0x0110)).strip()
    artist = str(exif.get(0x013B, "")).strip(" \x00") or None
    return {"width": width, "height": height, "camera": camera or None, "artist": artist, "colours": colours,
            "grey": grey_image, "levels": len(np.unique(pixels[..., 1])), "flat": round(flat, 3),
            "thumb": thumb.ravel().tolist()}


def heldout_eligible(width: int, height: int) -> bool:
    return width >= HELDOUT_MIN[0] and height >= HELDOUT_MIN[1]


def assign_splits(entries: list[dict[str, Any]], fraction: float = HELDOUT_FRACTION) -> None:
    """Held-out: the round(fraction * N) eligible entries with the smallest sha256; the rest train."""
    count = round(fraction * len(entries))
    eligible = sorted((e for e in entries if heldout_eligible(e["width"], e["height"])), key=lambda e: e["sha256"])
    chosen = {e["sha256"] for e in eligible[:count]}
    for entry in entries:
        entry["split"] = "heldout" if entry["sha256"] in chosen else "train"


def output_name(package: str, path: str, suffix: str) -> str:
    parts = Path(path).parts
    stem = parts[parts.index("contents") - 1] if "contents" in parts else Path(path).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{package}__{stem}") + suffix.lower().replace(".jpeg", ".jpg")


# ---- refresh ----------------------------------------------------------------------------------------------

def scan(packages: tuple[str, ...], debs: Path, scratch: Path) -> dict[str, Any]:
    cache_file = debs / "facts.json"  # image statistics by package, version and path (decoding 5K PNGs is slow)
    cache: dict[str, Any] = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    try:
        return _scan(packages, debs, scratch, cache)
    finally:
        cache_file.write_text(json.dumps(cache))


def _scan(packages: tuple[str, ...], debs: Path, scratch: Path, cache: dict[str, Any]) -> dict[str, Any]:
    versions: dict[str, str] = {}
    accepted: list[dict[str, Any]] = []
    excluded: list[dict[str, str]] = []
    for package in packages:
        version = versions[package] = candidate_version(package)
        root = fetch(package, version, debs, scratch)
        copyright_file = root / "usr/share/doc" / package / "copyright"
        stanzas = copyright_stanzas(copyright_file.read_text(errors="replace")) if copyright_file.exists() else []
        for file in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
            rel = file.relative_to(root).as_posix()
            if not rel.startswith(WALLPAPER_DIRS) or file.suffix.lower() not in RASTER | {".svg", ".svgz"}:
                continue
            key = f"{package}:{rel}"

            def leave_out(reason: str, key: str = key) -> None:
                excluded.append({"key": key, "reason": reason})

            if file.suffix.lower() in {".svg", ".svgz"}:
                leave_out("vector (SVG)")
                continue
            if file.is_symlink():
                continue  # a link to another file of the package (which is scanned itself)
            if any(word in file.name.lower() for word in ("screenshot", "preview", "thumbnail")):
                continue
            facts = cache.get(f"{key}@{version}#2") or image_facts(file)
            cache[f"{key}@{version}#2"] = facts
            if min(facts["width"], facts["height"]) < MIN_SIDE:
                continue  # icons, theme parts
            if facts["grey"]:
                stats = f"black and white, {facts['levels']} grey levels at 768 px"
                too_few = facts["levels"] < MIN_GREY_LEVELS
            else:
                stats = f"{facts['colours']} colours at 768 px"
                too_few = facts["colours"] < MIN_COLOURS
            stats += f", {facts['flat']:.0%} flat 8x8 blocks"
            if too_few or facts["flat"] > MAX_FLAT:
                leave_out(f"artwork by statistics: {stats}")
                continue
            review = REVIEWED.get(key)
            if review is not None and review != PHOTO:
                leave_out(review)
                continue
            if review == PHOTO:
                reason = "photograph (visual review)" + (f"; EXIF camera {facts['camera']}" if facts["camera"] else "")
            elif facts["camera"]:
                reason = f"photograph: EXIF camera {facts['camera']}"
            else:
                leave_out(f"unreviewed: no camera EXIF, {stats}; look at it and add it to REVIEWED")
                continue
            licence, holders = licence_of(stanzas, rel)
            author = plasma_author(root, rel) or facts["artist"] or holders
            accepted.append({"package": package, "package_version": version, "file": rel,
                             "name": output_name(package, rel, file.suffix), "sha256": sha256_file(file),
                             "licence": licence, "author": author, "copyright": holders,
                             "width": facts["width"], "height": facts["height"],
                             "reason": f"{reason}; {stats}", "_thumb": facts["thumb"]})
    kept = deduplicate(accepted, excluded)
    assign_splits(kept)
    return {"description": "Photographs from Debian's desktop-background packages for the image codec "
                           "(scripts/build_codec_corpus.py); split: held-out = the "
                           f"{HELDOUT_FRACTION:.0%} with the smallest sha256 among those >= 768x512",
            "distribution": "Debian 12 (bookworm)", "packages": versions, "images": kept, "excluded": excluded}


def deduplicate(entries: list[dict[str, Any]], excluded: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One entry per picture: the largest of those with the same bytes, or the same aspect ratio (within 3 %)
    and 16x16 grey thumbnails within DUPLICATE_DIFF grey levels (mean absolute difference)."""

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        if a["sha256"] == b["sha256"]:
            return True
        ratio = (a["width"] / a["height"]) / (b["width"] / b["height"])
        diff = np.abs(np.asarray(a["_thumb"], dtype=np.float32) - np.asarray(b["_thumb"], dtype=np.float32)).mean()
        return abs(ratio - 1) < 0.03 and float(diff) < DUPLICATE_DIFF

    kept: list[dict[str, Any]] = []
    for entry in sorted(entries, key=lambda e: (-e["width"] * e["height"], e["package"], e["file"])):
        twin = next((k for k in kept if same(k, entry)), None)
        if twin is not None:
            excluded.append({"key": f"{entry['package']}:{entry['file']}",
                             "reason": f"duplicate of {twin['package']}:{twin['file']} (kept the larger)"})
        else:
            kept.append(entry)
    for entry in kept:
        entry.pop("_thumb")
    return sorted(kept, key=lambda e: (e["package"], e["file"]))


# ---- build ------------------------------------------------------------------------------------------------

def build(manifest: dict[str, Any], out: Path, debs: Path, scratch: Path) -> dict[str, Any]:
    for split in ("train", "heldout"):
        (out / split).mkdir(parents=True, exist_ok=True)
        listed = {e["name"] for e in manifest["images"] if e["split"] == split}
        for stale in (p for p in (out / split).iterdir() if p.name not in listed):
            stale.unlink()  # from an older manifest (another split or left out since)
    for entry in manifest["images"]:
        target = out / entry["split"] / entry["name"]
        if target.exists() and sha256_file(target) == entry["sha256"]:
            continue
        root = fetch(entry["package"], entry["package_version"], debs, scratch)
        source = root / entry["file"]
        digest = sha256_file(source)
        if digest != entry["sha256"]:
            raise SystemExit(f"{entry['package']}:{entry['file']}: sha256 {digest} != manifest {entry['sha256']}")
        shutil.copyfile(source, target)
    (out / "corpus.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return summary(manifest, out)


def summary(manifest: dict[str, Any], out: Path | None = None) -> dict[str, Any]:
    images = manifest["images"]
    per_package: dict[str, int] = {}
    for entry in images:
        per_package[entry["package"]] = per_package.get(entry["package"], 0) + 1
    result: dict[str, Any] = {"photos": len(images), "per_package": per_package,
                              "train": sum(e["split"] == "train" for e in images),
                              "heldout": sum(e["split"] == "heldout" for e in images),
                              "megapixels": round(sum(e["width"] * e["height"] for e in images) / 1e6, 1)}
    if out is not None:
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.parent.name in ("train", "heldout"))
        result["bytes"] = size
        result["size"] = f"{size / 2**20:.1f} MiB"
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="corpus folder (train/, heldout/, corpus.json)")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--refresh", action="store_true", help="re-scan the packages and rewrite the manifest")
    parser.add_argument("--debs", type=Path, default=None, help="where the .deb files are kept (default OUT/debs)")
    args = parser.parse_args(argv)
    debs = args.debs or args.out / "debs"
    with tempfile.TemporaryDirectory(prefix="codec_corpus_") as tmp:
        scratch = Path(tmp)
        if args.refresh:
            manifest = scan(PACKAGES, debs, scratch)
            args.manifest.parent.mkdir(parents=True, exist_ok=True)
            args.manifest.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
            print(f"wrote {args.manifest}: {len(manifest['images'])} photographs, "
                  f"{len(manifest['excluded'])} files left out", file=sys.stderr)
        manifest = json.loads(args.manifest.read_text())
        print(json.dumps(build(manifest, args.out, debs, scratch), indent=1))


if __name__ == "__main__":
    main()
