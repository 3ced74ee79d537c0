"""`unetgen.draw_unet` and `unetgen draw`: Figure 1's numbers, the legend, layout properties over
drawn configs, the committed diagrams, a real headless browser and the optional rasteriser."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
import torch
from conftest import configs
from hypothesis import given, settings

from unetgen import InputShapeError, UNetConfig, build_unet, draw_unet, get_preset, save_unet
from unetgen.cli import main
from unetgen.draw import MAX_WIDTH, _dropout_levels, _norm_text
from unetgen.model.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

ROOT = Path(__file__).resolve().parents[1]
NS = "{http://www.w3.org/2000/svg}"

# Figure 1 of Ronneberger et al. 2015: every size and every channel count it prints
FIGURE_1_SIZES = {572, 570, 568, 284, 282, 280, 140, 138, 136, 68, 66, 64, 32, 30, 28}
FIGURE_1_SIZES |= {56, 54, 52, 104, 102, 100, 200, 198, 196, 392, 390, 388}
FIGURE_1_CHANNELS = {1, 64, 128, 256, 512, 1024, 2}

# the committed diagrams and the commands that regenerate them
DIAGRAMS = {
    "docs/ronneberger2015.svg": "unetgen draw ronneberger2015 --input-size 572 -o docs/ronneberger2015.svg",
    "docs/cicek2016.svg": "unetgen draw cicek2016 --input-size 132x132x116 -o docs/cicek2016.svg",
    "docs/oktay2018.svg": "unetgen draw oktay2018 --input-size 64 -o docs/oktay2018.svg",
}


# ---------------------------------------------------------------------------------------------
# reading a diagram back


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def canvas(root: ET.Element) -> tuple[float, float]:
    _, _, w, h = map(float, root.get("viewBox").split())
    return w, h


def texts(root: ET.Element) -> list[ET.Element]:
    return list(root.iter(f"{NS}text"))


def size_labels(root: ET.Element) -> list[str]:
    return [t.text for t in texts(root) if t.get("transform", "").startswith("rotate(-90")]


def boxes(root: ET.Element) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of every feature-map box (legend samples excluded)."""
    out = []
    for r in root.iter(f"{NS}rect"):
        if r.get("class", "").startswith("map "):
            x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
            out.append((x, y, x + w, y + h))
    return out


def arrows(root: ET.Element) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(start, tip) of every arrow of the network (the legend's samples excluded)."""
    legend = {id(e) for g in root.iter(f"{NS}g") if g.get("class") == "legend" for e in g.iter()}
    out = []
    for g in root.iter(f"{NS}g"):
        if g.get("class", "").startswith("arrow ") and id(g) not in legend:
            start = tuple(map(float, re.match(r"M([-\d.]+) ([-\d.]+)", g.find(f"{NS}path").get("d")).groups()))
            tip = tuple(map(float, g.find(f"{NS}polygon").get("points").split()[0].split(",")))
            out.append((start, tip))
    return out


def text_box(t: ET.Element, em: float = 0.5) -> tuple[float, float, float, float]:
    """A lower estimate of a text's extent: `em` per character (0.27 for the narrowest glyphs, such
    as i, l, spaces and parentheses), 0.7 of the size above the baseline."""
    x, y, size = float(t.get("x")), float(t.get("y")), float(t.get("font-size"))
    length = size * sum(0.27 if ch in "il.,:;'|!()[] " else em for ch in t.text)
    start = {"start": 0.0, "middle": -length / 2, "end": -length}[t.get("text-anchor", "start")]
    if t.get("transform", "").startswith("rotate(-90"):  # reads upwards, glyphs to the left
        return x - 0.7 * size, y - start - length, x, y - start
    return x + start, y - 0.7 * size, x + start + length, y


def overlap(a: tuple[float, ...], b: tuple[float, ...], tol: float = 0.05) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


def on_boundary(p: tuple[float, float], box: tuple[float, ...], tol: float = 0.15) -> bool:
    x, y = p
    x0, y0, x1, y1 = box
    inside = x0 - tol <= x <= x1 + tol and y0 - tol <= y <= y1 + tol
    edge = min(abs(x - x0), abs(x - x1), abs(y - y0), abs(y - y1)) <= tol
    return inside and edge


# ---------------------------------------------------------------------------------------------
# Figure 1


def test_paper_diagram_carries_every_number_of_figure_1() -> None:
    root = parse(draw_unet(UNetConfig(), 572))
    sizes = size_labels(root)
    assert {f"{n}x{n}" for n in FIGURE_1_SIZES} == set(sizes)
    labels = [t.text for t in texts(root) if not t.get("transform") and t.text.isdigit()]
    assert set(map(int, labels)) == FIGURE_1_CHANNELS
    # one box per map: 15 encoder maps, 4 x (copy + up + 2 convs) and the output
    assert len(boxes(root)) == 15 + 4 * 4 + 1
    crops = sorted(t.text for t in texts(root) if t.text.startswith("crop "))
    assert crops == ["crop 16", "crop 4", "crop 40", "crop 88"]  # (568 - 392) / 2 = 88, ...
    legend = " | ".join(t.text for t in texts(root))
    for phrase in ("conv 3x3 (no padding), ReLU", "copy and crop", "max pool 2x2", "up-conv 2x2", "conv 1x1"):
        assert phrase in legend


def test_default_size_is_the_smallest_valid_input_and_says_so() -> None:
    root = parse(draw_unet(UNetConfig()))
    assert "188x188" in size_labels(root)
    assert any("smallest valid input" in t.text for t in texts(root))
    with pytest.raises(InputShapeError, match="nearest valid: 556, 572"):
        draw_unet(UNetConfig(), 570)
    for bad in ((572.0, 572.0), (True, 572), "572"):
        with pytest.raises(InputShapeError, match="must be whole numbers"):
            draw_unet(UNetConfig(), bad)


def test_3d_anisotropic_sizes_and_strides() -> None:
    cfg = get_preset("nnunet-3d-anisotropic")
    root = parse(draw_unet(cfg))
    assert "16x64x64" in size_labels(root) and "8x32x32" not in size_labels(root)
    strides = [t.text for t in texts(root) if t.get("class") == "stride"]
    assert strides.count("1x2x2") == 4 and strides.count("2x2x2") == 6  # each step, down and up
    legend = " | ".join(t.text for t in texts(root))
    assert "conv 1x3x3 (levels 0-1), 3x3x3 (levels 2-5)" in legend
    assert "stride at each arrow" in legend and "instance norm" in legend and "leaky ReLU (0.01)" in legend


def test_1d_sizes_are_single_numbers() -> None:
    root = parse(draw_unet(UNetConfig(spatial_dims=1, depth=2, base_channels=4), 100))
    assert all(label.isdigit() for label in size_labels(root)) and "100" in size_labels(root)
    assert any(t.text.startswith("conv 3 (no padding)") for t in texts(root))


LEGENDS = [
    ({}, ["max pool 2x2", "up-conv 2x2 (transposed conv", "copy and crop, concatenate", "dropout 0.5"]),
    ({"down": "avg", "up": "nearest", "padding": "same"}, ["average pool 2x2", "nearest up-sampling by 2"]),
    ({"down": "conv", "up": "linear", "spatial_dims": 3}, ["strided conv 2x2x2", "trilinear up-sampling by 2"]),
    ({"norm": {"type": "group", "num_groups": 4}, "activation": "gelu"}, ["group norm (4 groups), GELU"]),
    ({"block": "residual", "norm": "batch"}, ["conv 3x3 (no padding), batch norm, ReLU", "residual block"]),
    ({"block": {"type": "residual", "preactivation": True}, "norm": "layer"}, ["layer norm, ReLU, conv 3x3"]),
    ({"merge": "add"}, ["copy and crop, add", "sum of the copy"]),
    ({"merge": "attention", "deep_supervision": [1, 2]}, ["attention gate", "deep supervision"]),
    ({"dropout": {"rate": 0.2, "spatial": True}}, ["channel dropout 0.2"]),
    ({"convs_per_block": 5}, ["xN: N convs in a row"]),
    (
        {"block": {"type": "residual", "excitation": "scse", "post_activation": "elu"}, "decoder_block": "plain"},
        ["scSE, reduction 2, max of the two) at the end of each encoder block", "then ELU", "(no padding), ReLU"],
    ),
    ({"block": {"type": "plain", "excitation": "sse"}}, ["squeeze-and-excitation (sSE) at the end of each block"]),
    ({"up": {"type": "transpose", "kernel_size": 3, "size_by": "nearest_resize"}}, ["kernel 3), nearest resize"]),
]


@pytest.mark.parametrize(("update", "phrases"), LEGENDS)
def test_legend_lists_the_operations_used(update: dict, phrases: list[str]) -> None:
    cfg = UNetConfig(base_channels=8, **update)
    root = parse(draw_unet(cfg))
    legend = [t.text for g in root.iter(f"{NS}g") if g.get("class") == "legend" for t in g.iter(f"{NS}text")]
    for phrase in phrases:
        assert any(phrase in line for line in legend), (phrase, legend)
    unused = {
        "dropout": cfg.dropout.rate == 0,
        "attention gate": cfg.merge.type != "attention",
        "residual": cfg.block.type != "residual",
        "deep supervision": not cfg.deep_supervision,
        "copy and crop": cfg.padding == "same",
        "xN": max(cfg.convs_per_block if isinstance(cfg.convs_per_block, tuple) else (cfg.convs_per_block,)) <= 3,
    }
    for phrase, absent in unused.items():
        if absent:
            assert not any(phrase in line for line in legend), (phrase, legend)


def test_an_option_without_a_legend_entry_is_refused() -> None:
    cfg = UNetConfig.model_construct(norm=object())
    with pytest.raises(TypeError, match="no legend entry for norm object"):
        _norm_text(cfg.norm)  # the legend reads the option off the NormOp ops


@pytest.mark.parametrize("placement", ["contracting_end", "bottleneck", "encoder", "decoder", "all"])
def test_dropout_marks_match_the_model(placement: str) -> None:
    cfg = UNetConfig(depth=3, base_channels=2, dropout={"placement": placement})
    with torch.device("meta"):
        model = UNet(cfg)
    levels = [*model.encoder, model.bottleneck]
    enc = {i for i, level in enumerate(levels) if level.block.dropout is not None}
    dec = {level.block.dropout is not None for level in model.decoder}
    assert _dropout_levels(cfg) == (enc, dec == {True})
    assert len(dec) == 1
    root = parse(draw_unet(cfg))
    dashed = [r for r in root.iter(f"{NS}rect") if r.get("class") == "map map" and r.get("stroke-dasharray")]
    assert len(dashed) == len(enc) + (cfg.depth if dec == {True} else 0)


# ---------------------------------------------------------------------------------------------
# layout properties


def check_layout(svg: str) -> None:
    root = parse(svg)
    width, height = canvas(root)
    assert width <= MAX_WIDTH and float(root.get("width")) == width
    maps = boxes(root)
    for i, a in enumerate(maps):
        assert 0 <= a[0] and a[2] <= width and 0 <= a[1] and a[3] <= height, a
        for b in maps[i + 1 :]:
            assert not overlap(a, b), (a, b)
    spans = [text_box(t) for t in texts(root)]
    for start, tip in arrows(root):
        assert any(on_boundary(start, b) for b in maps), f"arrow starts off every box: {start}"
        assert any(on_boundary(tip, b) for b in maps), f"arrow ends off every box: {tip}"
        assert start[0] == tip[0] or start[1] == tip[1], "arrows run across or up and down"
        line = (min(start[0], tip[0]), min(start[1], tip[1]), max(start[0], tip[0]), max(start[1], tip[1]))
        line = tuple(v + d for v, d in zip(line, (-0.5, -0.5, 0.5, 0.5), strict=True))  # the stroke
        inner = tuple(v + d for v, d in zip(line, (1, 1, -1, -1), strict=True))  # between its ends
        assert not [b for b in maps if overlap(inner, b, tol=0.3)], f"arrow {start} -> {tip} crosses a box"
        assert not [t.text for t, span in zip(texts(root), spans, strict=True) if overlap(line, span, tol=0.3)]
    for i, s in enumerate(spans):
        assert 0 <= s[0] and s[2] <= width and 0 <= s[1] and s[3] <= height, (texts(root)[i].text, s, width)
        hits = [b for b in maps if overlap(s, b, tol=0.5)]
        assert not hits, (texts(root)[i].text, s, hits)
        for j in range(i + 1, len(spans)):
            assert not overlap(s, spans[j], tol=0.5), (texts(root)[i].text, texts(root)[j].text)


@settings(max_examples=12)
@given(configs(max_depth=8))
def test_layout_over_drawn_configs(cfg: UNetConfig) -> None:
    unpooled = cfg.down.type == "first_conv" or not cfg.resample_bottleneck  # no pooled map before the bottleneck
    if unpooled and len(cfg.layout.encoder[-1].channels) < 2:
        with pytest.raises(ValueError, match="two or more conv maps in the bottleneck"):
            draw_unet(cfg)
        return
    check_layout(draw_unet(cfg))


def test_found_by_the_layout_property() -> None:
    """Cases the drawn-config property found: a decoder level without convs (its pair is where the
    next up arrow leaves: the label moves right of the arrow) and one resolution only (depth 1
    without resampling: no down or up arrow, so no legend entry for them)."""
    pair = UNetConfig(spatial_dims=1, in_channels=2, out_channels=1, depth=2, convs_per_block=1,
                      norm="batch", channels=[4, 6, 4], decoder_convs_per_block=0)  # fmt: skip
    check_layout(draw_unet(pair))
    for dims in (1, 2):
        flat = UNetConfig(spatial_dims=dims, out_channels=1, depth=1, base_channels=1, channel_multiplier=1,
                          strides=[[1] * dims], resample_bottleneck=False)  # fmt: skip
        svg = draw_unet(flat)
        check_layout(svg)
        assert "max pool" not in svg and "up-conv" not in svg


@pytest.mark.parametrize("convs", [1, 2, 3, 8])
def test_depth_8_stays_within_the_width(convs: int) -> None:
    cfg = UNetConfig(
        depth=8, base_channels=1, convs_per_block=convs, spatial_dims=3, merge="attention", block="residual",
        deep_supervision=list(range(1, 8)), dropout={"placement": "all"},
    )  # fmt: skip
    svg = draw_unet(cfg)
    check_layout(svg)
    drawn = len(boxes(parse(svg)))
    assert drawn >= 9 + 8 * 2 * 2  # at least one conv map per block and every pooled, copied, up-sampled map


def test_absurd_sizes_are_scaled_to_the_width() -> None:
    cfg = UNetConfig(depth=8, channels=[16384] * 9, convs_per_block=8, kernel_size=15, strides=[[1, 8, 2]] * 8,
                     spatial_dims=3, merge="attention", deep_supervision=list(range(1, 8)))  # fmt: skip
    root = parse(draw_unet(cfg))
    width, height = canvas(root)
    assert float(root.get("width")) <= MAX_WIDTH
    assert float(root.get("height")) / float(root.get("width")) == pytest.approx(height / width, rel=1e-3)


def test_self_contained_and_escaped() -> None:
    svg = draw_unet(get_preset("oktay2018"))
    for banned in ("href", "url(", "@import", "<image", "<script", "@font-face", "<style"):
        assert banned not in svg
    fonts = set(re.findall(r'font-family="([^"]*)"', svg))
    assert fonts == {"sans-serif"}
    root = parse(svg)
    assert root.find(f"{NS}title").text.startswith("U-Net, 3D, depth 4")


# ---------------------------------------------------------------------------------------------
# the committed diagrams and the command line


@pytest.mark.parametrize("path", sorted(DIAGRAMS))
def test_committed_diagrams_are_current(path: str) -> None:
    command = DIAGRAMS[path]
    args = command.split()[1:]
    preset, size = args[1], args[3]
    committed = (ROOT / path).read_text(encoding="utf-8")
    cfg = get_preset(preset)
    sizes = tuple(map(int, size.split("x")))
    fresh = draw_unet(cfg, sizes * cfg.spatial_dims if len(sizes) == 1 else sizes)
    assert committed == fresh, f"{path} is stale; run: {command}"
    assert f"`{command}`" in (ROOT / "docs" / "diagrams.md").read_text(encoding="utf-8")


def test_cli_draw_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "unet.svg"
    assert main(["draw", "ronneberger2015", "--input-size", "572", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == draw_unet(UNetConfig(), 572)
    assert main(["draw", "ronneberger2015", "--input-size", "570", "-o", str(out)]) == 1  # a failure, not usage
    assert main(["draw", "ronneberger2015", "-o", str(tmp_path / "unet.gif")]) == 2
    assert main(["draw", "ronneberger2015", "-o", str(tmp_path / "no" / "unet.svg")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err[1:]] == ["error"] * 3
    assert "nearest valid: 556, 572" in err[1] and "use .svg, .png, .pdf" in err[2]


def test_cli_draws_a_checkpoint_and_a_config_file(tmp_path: Path) -> None:
    cfg = UNetConfig(spatial_dims=3, depth=2, base_channels=2, strides=[[1, 2, 2], 2], norm="instance")
    save_unet(build_unet(cfg), tmp_path / "unet.safetensors")
    assert main(["draw", str(tmp_path / "unet.safetensors"), "-o", str(tmp_path / "a.svg")]) == 0
    assert (tmp_path / "a.svg").read_text(encoding="utf-8") == draw_unet(cfg)
    config = ROOT / "examples" / "cicek2016.yaml"
    assert main(["draw", str(config), "--input-size", "132x132x116", "-o", str(tmp_path / "b.svg")]) == 0
    assert (tmp_path / "b.svg").read_text(encoding="utf-8") == (ROOT / "docs" / "cicek2016.svg").read_text()


def test_cli_names_the_render_extra_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "cairosvg", None)  # import cairosvg raises ImportError
    assert main(["draw", "ronneberger2015", "-o", str(tmp_path / "unet.png")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: writing .png needs the optional renderer: pip install 'unetgen[render]'")
    assert not (tmp_path / "unet.png").exists()


# ---------------------------------------------------------------------------------------------
# pixels: the optional rasteriser (runs in CI) and a real headless browser


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixels) of an 8-bit, non-interlaced RGB or RGBA PNG: with
    Pillow where installed (cairosvg brings it), else decoded here (slower)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    if importlib.util.find_spec("PIL") is not None:
        import io

        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        return image.width, image.height, 3, image.tobytes()
    pos, idat = 8, b""
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour, interlace = (
                *(int.from_bytes(body[k : k + 4], "big") for k in (0, 4)),
                *body[8:10],
                body[12],
            )
            assert depth == 8 and colour in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    out, prev = bytearray(), bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif f:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                if f == 1:
                    line[i] = (line[i] + a) & 255
                elif f == 3:
                    line[i] = (line[i] + (a + b) // 2) & 255
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return w, h, bpp, bytes(out)


def check_pixels(png: bytes, min_width: int) -> None:
    """Not blank: mostly white, some black text and lines, the boxes' sky blue, the arrows' colours."""
    w, _, bpp, px = png_pixels(png)
    assert w >= min_width
    colours = [tuple(px[i : i + 3]) for i in range(0, len(px), bpp * 7)]  # a sample
    white = sum(c == (255, 255, 255) for c in colours) / len(colours)
    dark = sum(max(c) < 90 for c in colours) / len(colours)
    sky = sum(abs(c[0] - 0x56) < 30 and abs(c[1] - 0xB4) < 30 and abs(c[2] - 0xE9) < 30 for c in colours)
    assert 0.5 < white < 0.97 and dark > 0.002 and sky / len(colours) > 0.02, (white, dark, sky)


def renderer_missing() -> bool:
    try:
        import cairosvg  # noqa: F401  (raises OSError without the system cairo library)
    except (ImportError, OSError):
        return True
    return False


@pytest.mark.skipif(renderer_missing(), reason="the render extra: pip install -e .[render] (and libcairo2)")
def test_cli_rasterises_with_cairosvg(tmp_path: Path) -> None:
    png, pdf = tmp_path / "unet.png", tmp_path / "unet.pdf"
    assert main(["draw", "ronneberger2015", "--input-size", "572", "-o", str(png)]) == 0
    assert main(["draw", "ronneberger2015", "--input-size", "572", "-o", str(pdf)]) == 0
    check_pixels(png.read_bytes(), min_width=2 * 1000)  # drawn at twice the SVG's size
    assert pdf.read_bytes().startswith(b"%PDF")


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
MEASURE = """<!doctype html><html><body style="margin:0">%s<pre id="out"></pre><script>
const svg = document.querySelector("svg"), frame = svg.getBoundingClientRect();
const rect = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const texts = [...svg.querySelectorAll("text")], maps = [...svg.querySelectorAll("rect.map")];
const lines = [...svg.querySelectorAll("g.arrow path, path.residual, polygon.gate")];
const wide = e => { const r = rect(e); return [r[0] - 1, r[1] - 1, r[2] + 1, r[3] + 1]; };  // the stroke
const hit = (a, b) =>
  Math.min(a[2], b[2]) - Math.max(a[0], b[0]) > 0.5 && Math.min(a[3], b[3]) - Math.max(a[1], b[1]) > 0.5;
const out = {texts: texts.length, outside: [], overlaps: []};
texts.forEach((t, i) => {
  const a = rect(t);
  const off = a[0] < frame.left || a[1] < frame.top || a[2] > frame.right || a[3] > frame.bottom;
  if (off) out.outside.push(t.textContent);
  texts.slice(i + 1).forEach(u => { if (hit(a, rect(u))) out.overlaps.push([t.textContent, u.textContent]); });
  maps.forEach(m => { if (hit(a, rect(m))) out.overlaps.push([t.textContent, m.getAttribute("class")]); });
  lines.forEach(l => { if (hit(a, wide(l))) out.overlaps.push([t.textContent, l.outerHTML]); });
});
document.getElementById("out").textContent = JSON.stringify(out);
</script></body></html>"""


def browser(*args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    return subprocess.run([BROWSER, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(BROWSER is None, reason="no headless browser (apt-get install chromium)")
def test_real_browser_renders_it(tmp_path: Path) -> None:
    svg = draw_unet(UNetConfig(), 572)
    width, height = canvas(parse(svg))
    page = tmp_path / "unet.svg"
    page.write_text(svg, encoding="utf-8")
    shot = tmp_path / "shot.png"
    browser(f"--window-size={int(width) + 1},{int(height) + 1}", f"--screenshot={shot}", page.as_uri())
    check_pixels(shot.read_bytes(), min_width=int(width))
    # the browser's own text metrics: every label inside the canvas, none on another or on a box
    measure = tmp_path / "measure.html"
    cfg = get_preset("oktay2018").model_copy(update={"block": "residual", "padding": "valid"})
    measure.write_text(MEASURE % draw_unet(cfg), encoding="utf-8")
    dom = browser("--dump-dom", measure.as_uri()).stdout
    result = json.loads(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert result["texts"] > 50
    assert result["outside"] == [] and result["overlaps"] == [], result
