"""Seeds for the `fix` fuzz target: the fixture projects and the inline projects of
src/fix/tests.rs, in the target's input format (a target byte, then NUL-separated files, each
its path on the first line). Usage: python3 fuzz/scripts/fix_seeds.py OUTDIR (from the repo root)."""
import codecs
import os
import re
import sys

SETTINGS = (".py", ".yaml", ".yml", ".json", ".toml", ".sh")


def pack(target, files):
    return bytes([target]) + b"\0".join(name.encode() + b"\n" + body for name, body in files)


def main(out):
    os.makedirs(out, exist_ok=True)
    n = 0
    root = "tests/fixtures/fix"
    for proj in sorted(os.listdir(root)):
        files = []
        for dirpath, _, names in sorted(os.walk(os.path.join(root, proj))):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, os.path.join(root, proj))
                if rel.endswith(SETTINGS) or rel.lower().startswith("readme"):
                    with open(path, "rb") as f:
                        files.append((rel, f.read()))
        for target in range(4):
            with open(os.path.join(out, f"{proj}_{target}"), "wb") as f:
                f.write(pack(target, files[:16]))
            n += 1
    src = open("src/fix/tests.rs", encoding="utf-8").read()
    for i, m in enumerate(re.finditer(r"project\(&\[(.*?)\]\);", src, re.S)):
        pairs = re.findall(r'\(\s*"([^"]+)",\s*"((?:[^"\\]|\\.)*)"\s*,?\s*\)', m.group(1), re.S)
        if not pairs:
            continue
        files = [(name, codecs.decode(body, "unicode_escape").encode("latin-1")) for name, body in pairs]
        with open(os.path.join(out, f"inline_{i}"), "wb") as f:
            f.write(pack(i % 4, files))
        n += 1
    print(f"{n} seeds in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
