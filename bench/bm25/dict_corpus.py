"""A BM25 speed corpus from Debian's dictionary packages (dict-gcide: Webster's 1913 and
additions; dict-wn: WordNet 3.0), as ../shared/bench's minilm-real set was made: one
passage per dictionary sense, "headword: definition", 6 to 90 words, exact duplicates
removed, shuffled with a fixed seed. Queries: 1,000 held-out senses, each cut to its
headword and up to 4 other words (short keyword queries, as users type).

    python dict_corpus.py DICTD_DIR OUT_DIR
        DICTD_DIR holds gcide.index, gcide.dict.dz, wn.index, wn.dict.dz
        (apt-get download dict-gcide dict-wn; dpkg-deb -x each .deb; usr/share/dictd)
        writes OUT_DIR/corpus.jsonl ({"id", "title", "text"}) and OUT_DIR/queries.txt
"""

import gzip
import json
import os
import random
import re
import sys

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(s):
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def entries(d, name):
    data = gzip.open(os.path.join(d, name + ".dict.dz")).read()
    for line in open(os.path.join(d, name + ".index"), encoding="utf-8", errors="replace"):
        f = line.rstrip("\n").split("\t")
        if len(f) < 3 or f[0].startswith("00database"):
            continue
        off, n = b64(f[1]), b64(f[2])
        yield f[0], data[off:off + n].decode("utf-8", errors="replace")


def senses(body):
    """Definitions in an entry: numbered senses, or the paragraphs after the headword."""
    text = re.sub(r"\s+", " ", body).strip()
    parts = re.split(r"\s(?:\d{1,2}\.|\(\w\)|n \d+:|v \d+:|adj \d+:|adv \d+:)\s", text)
    return [p.strip() for p in parts[1:] if p.strip()] or [text]


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    seen, passages = set(), []
    for name in ("gcide", "wn"):
        for head, body in entries(src, name):
            for s in senses(body):
                s = re.sub(r"\[[^\]]{0,200}\]", "", s).strip()
                words = s.split()
                if not 6 <= len(words) <= 90:
                    continue
                p = f"{head}: {' '.join(words)}"
                if p not in seen:
                    seen.add(p)
                    passages.append((head, p))
    random.Random(20261130).shuffle(passages)
    held, base = passages[:1000], passages[1000:]
    with open(os.path.join(out, "corpus.jsonl"), "w") as f:
        for i, (head, p) in enumerate(base):
            f.write(json.dumps({"id": str(i), "title": "", "text": p}) + "\n")
    r = random.Random(7)
    with open(os.path.join(out, "queries.txt"), "w") as f:
        for head, p in held:
            words = [w.strip(".,;:()\"'") for w in p.split(":", 1)[1].split()]
            words = [w for w in words if len(w) > 3]
            f.write(" ".join([head] + r.sample(words, min(4, len(words)))) + "\n")
    print(json.dumps({"passages": len(base), "queries": len(held)}))


main()
