"""Every command of the tutorials and of the README runs here, in the page's order, as a reader types
it: on small generated data of the same layout (the data folders substituted, one epoch instead of
the page's), so that a renamed option or a changed default breaks this test, not a reader.

A page's blocks run top to bottom in one fresh folder: ``bash`` lines as commands (``medclassify``
in this process, ``medclassify serve`` as a server on a free port that the page's ``curl`` lines then
call, anything else in a shell), ``python`` blocks as code, and a block with a ``title="FILE"`` is
written to FILE first. ``text`` blocks are output, not input. The figures' captions repeat the command
that made each figure, as ``docs/tutorials/img/figures.json`` records it."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_cli, serving, write_image_folder, write_medmnist_npz

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
PAGES = sorted(p for p in TUTORIALS.glob("*.md") if not p.name.endswith(".zh.md"))
TRANSLATED = sorted(TUTORIALS.glob("*.zh.md")) + sorted((ROOT / "docs").glob("*.zh.md"))

FENCE = re.compile(r"^```(?P<language>\w+)(?P<info>[^\n]*)\n(?P<text>.*?)^```", re.MULTILINE | re.DOTALL)
NOT_RUN = {  # commands a page shows that this test cannot or need not run, and why
    ("pip", "install"): "the environment these tests run in is that install",
    ("pytest",): "the command running this test",
    ("mkdocs", "serve"): "a server for reading the site; tests/test_docs.py builds it",
}
FILES = {  # the data a reader has, as the pages name it -> what this test generates for it
    "~/medmnist": "data",
    "../shared/data": "data",
    "chest_xray": "chest_xray",
    "other_hospital": "other_hospital/test",
}


@dataclass
class Block:
    language: str
    title: str | None
    text: str


def blocks(page: Path) -> list[Block]:
    found = []
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        title = re.search(r'title="([^"]+)"', match["info"])
        found.append(Block(match["language"], title[1] if title else None, match["text"]))
    return found


def command_lines(text: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, ``a && b`` as two commands, comments
    and blank lines dropped."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while "&&" in words:
            commands.append(words[: words.index("&&")])
            words = words[words.index("&&") + 1 :]
        if words:
            commands.append(words)
    return commands


def shortened(words: list[str]) -> list[str]:
    """A medclassify command with one epoch (two when the backbone unfreezes, after the first), an
    int8 export whose accuracy gate lets anything through (the test split is tiny), a
    study with one seed where the command gives none (two at most where it does) and its report with 50 bootstrap resamples, and the generated MedMNIST files accepted (their MD5
    sums are not the official ones)."""
    command = words[1] if len(words) > 1 else ""
    if command in ("train", "demo"):
        epochs = "1"
        if "--unfreeze-after" in words:
            words[words.index("--unfreeze-after") + 1], epochs = "1", "2"
        if "--epochs" in words:
            words[words.index("--epochs") + 1] = epochs
        else:
            words += ["--epochs", epochs]
        if command == "train":
            words.append("--no-verify")
    elif command == "export" and ("--quantize" in words or "edge" in words):
        words += ["--max-drop", "100"]  # 24 test images of a one-epoch model: one image is 4 points
    elif command in ("run", "reproduce"):
        words += ["--set", "epochs=1", "--no-verify", "--bootstrap", "50"]
        if "--seeds" in words:
            at = words.index("--seeds") + 1
            words[at] = str(min(int(words[at]), 2))
        else:
            words += ["--seeds", "1"]
    return words


@pytest.fixture(scope="module")
def reader_data(tmp_path_factory) -> Path:
    """What the pages' readers have: MedMNIST files of every dataset and size the pages use, a
    chest X-ray folder, another hospital's images, a cell image, and ImageNet's ResNet-18 weights in
    PyTorch's hub cache (random weights stand in for the download)."""
    root = tmp_path_factory.mktemp("reader")
    data = root / "data"
    small = (48, 24, 24)
    for name, channels, classes in (("bloodmnist", 3, 8), ("organcmnist", 1, 11), ("organamnist", 1, 11)):
        for size in (28, 64):
            file = f"{name}.npz" if size == 28 else f"{name}_{size}.npz"
            write_medmnist_npz(data / file, size=size, channels=channels, n_classes=classes, counts=small)
    write_medmnist_npz(data / "pneumoniamnist.npz", channels=1, n_classes=2, counts=small)
    write_medmnist_npz(data / "pneumoniamnist_224.npz", size=224, channels=1, n_classes=2, counts=(16, 8, 8))
    write_image_folder(root / "chest_xray", splits=("train", "test"), per_class=20, size=48, mode="L")
    write_image_folder(root / "other_hospital", splits=("test",), per_class=6, size=56, mode="RGB", seed=3)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(root / "cell.png")
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), hub / "resnet18-f37072fd.pth")
    return root


class Reader:
    """Runs a page's blocks in order in its own folder."""

    def __init__(self, page: Path, data: Path, folder: Path, capsys, stack: contextlib.ExitStack, python: bool) -> None:
        self.page, self.data, self.folder, self.capsys, self.stack = page, data, folder, capsys, stack
        self.python = python
        self.url: str | None = None

    def substituted(self, text: str) -> str:
        for name, generated in FILES.items():
            text = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w.-])", str(self.data / generated), text)
        return text

    def run_block(self, block: Block) -> None:
        if block.title:
            (self.folder / block.title).write_text(block.text, encoding="utf-8")
        elif block.language == "bash":
            for words in command_lines(self.substituted(block.text)):
                self.run_command(words)
        elif block.language == "python" and self.python:
            exec(compile(self.substituted(block.text), str(self.page), "exec"), {"__name__": "__tutorial__"})

    def run_command(self, words: list[str]) -> None:
        if any(tuple(words[: len(skip)]) == skip for skip in NOT_RUN):
            return
        shown = shlex.join(words)
        if words[:2] == ["medclassify", "serve"]:
            options = words[2:]
            if "--port" in options:
                del options[options.index("--port") : options.index("--port") + 2]
            _, self.url = self.stack.enter_context(serving(options, self.folder / "serve.log"))
        elif words[0] == "medclassify":
            code, out, err = run_cli(self.capsys, *shortened(words)[1:])
            assert code == 0, f"{self.page.name}: {shown} exited {code}:\n{err[-3000:]}"
        else:
            if words[0] == "curl":
                assert self.url, f"{self.page.name}: {shown} before 'medclassify serve'"
                words = ["curl", "--silent", "--show-error", "--fail"] + [
                    w.replace("http://127.0.0.1:8000", self.url) for w in words[1:]
                ]
            done = subprocess.run(words, cwd=self.folder, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{self.page.name}: {shown} exited {done.returncode}:\n{done.stderr[-3000:]}"


def read_as_a_reader(page: Path, reader_data: Path, folder: Path, capsys, monkeypatch, python: bool = True) -> None:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("TORCH_HOME", str(reader_data / "torch"))
    monkeypatch.setenv("MEDCLASSIFY_DATA", str(reader_data / "data"))  # where a command without --data-dir looks
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a page's command downloaded"))
    (folder / "cell.png").write_bytes((reader_data / "cell.png").read_bytes())
    with contextlib.ExitStack() as stack:
        reader = Reader(page, reader_data, folder, capsys, stack, python)
        for block in blocks(page):
            reader.run_block(block)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_every_command_of_a_tutorial_runs(page, reader_data, tmp_path, capsys, monkeypatch):
    read_as_a_reader(page, reader_data, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
def test_every_command_of_the_readme_runs(reader_data, tmp_path, capsys, monkeypatch):
    """The README's shell commands (its Python example runs in tests/test_api.py); the set-up
    commands it names are the ones .ci/run runs."""
    readme = ROOT / "README.md"
    shell = [b for b in blocks(readme) if b.language == "bash"]
    setup, tests = command_lines(shell[0].text), command_lines(shell[1].text)
    assert [w[:2] for w in setup] == [["pip", "install"], ["medclassify", "demo"]]
    assert tests == [["pip", "install", "-e", ".[dev]"], ["pytest"]]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'pip install --quiet (--no-compile )?-e ".\[dev\]"', ci) and "python -m pytest" in ci
    read_as_a_reader(readme, reader_data, tmp_path, capsys, monkeypatch, python=False)


def test_the_translations_show_the_same_commands_as_their_pages():
    """A translated page runs nothing of its own: its commands and files are the English page's."""
    assert TRANSLATED, "no translated page"
    for translated in TRANSLATED:
        english = translated.with_name(translated.name.replace(".zh.md", ".md"))
        assert english.is_file(), translated

        def code(page: Path) -> list[tuple[str, str | None, str]]:
            return [(b.language, b.title, b.text) for b in blocks(page) if b.language in ("bash", "yaml", "python")]

        assert code(translated) == code(english), translated.name


def test_each_figure_is_small_and_captioned_with_the_command_that_made_it():
    record = json.loads((TUTORIALS / "img" / "figures.json").read_text())
    assert record["date"] and record["machine"]
    shown = {}
    for page in PAGES + TRANSLATED:
        for match in re.finditer(r"!\[[^\]]*\]\(img/([^)]+)\)\s*<figcaption>(.*?)</figcaption>", page.read_text()):
            shown.setdefault(match[1], []).append((page.name, match[2]))
    assert set(shown) <= set(record["figures"]), set(shown) - set(record["figures"])
    for name, made in record["figures"].items():
        path = TUTORIALS / "img" / name
        assert path.stat().st_size == made["bytes"] <= 250_000, name
        with Image.open(path) as image:
            assert image.format == "PNG"
        for page, caption in shown.get(name, []):
            codes = re.findall(r"<code>(.*?)</code>", caption)
            assert all(line in codes for line in made["command"].split("\n")), (page, name)
