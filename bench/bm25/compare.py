"""BM25 quality of the `bm25s` package on the test sets of ../shared/data/ir, with the
metrics and loaders of `magpie eval` (crates/cli/src/eval.rs), for a side-by-side run
(bench/bm25/run.sh). Tokenisation: bm25s's tokenizer with Lucene's English stop words and the Snowball English
stemmer (PyStemmer), k1 and b as given, Lucene's BM25 variant (Magpie's).

    python compare.py DATASET_DIR [K1] [B] [--magpie-tokens MAGPIE_BIN]   -> one JSON line

With --magpie-tokens, bm25s indexes and queries the terms of Magpie's english analyzer
(`magpie analyze`) instead of its own tokenizer's: the same tokens on both sides, so
what remains of a difference is the scoring.
"""

import json
import math
import os
import subprocess
import sys
import time

import bm25s
import Stemmer

# Lucene's English stop words, the list of Magpie's english analyzer (bm25s's own "en"
# list is longer).
STOP = ("a an and are as at be but by for if in into is it no not of on or such that the their then "
        "there these they this to was will with").split()


def smart(path):
    recs, field = [], None
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if line.startswith(".I"):
            recs.append((line[2:].strip(), {}))
            field = None
        elif len(line) == 2 and line.startswith("."):
            field = line[1]
        elif field and recs:
            d = recs[-1][1]
            d[field] = (d.get(field, "") + " " + line.strip()).strip()
    return recs


def load(d):
    qrels = {}
    if os.path.exists(os.path.join(d, "corpus.jsonl")):
        docs = [json.loads(l) for l in open(os.path.join(d, "corpus.jsonl")) if l.strip()]
        docs = [(x["_id"], (x.get("title", "") + " " + x.get("text", "")).strip()) for x in docs]
        qs = [json.loads(l) for l in open(os.path.join(d, "queries.jsonl")) if l.strip()]
        qs = [(x["_id"], x["text"]) for x in qs]
        for line in list(open(os.path.join(d, "qrels", "test.tsv")))[1:]:
            q, doc, g = line.rstrip("\n").split("\t")[:3]
            if float(g) > 0:
                qrels.setdefault(q, {})[doc] = float(g)
        return docs, qs, qrels
    if os.path.exists(os.path.join(d, "cran.all.1400")):
        a, q, r, ordinal = "cran.all.1400", "cran.qry", "cranqrel", True
    else:
        a, q, r, ordinal = "CISI.ALL", "CISI.QRY", "CISI.REL", False
    docs = [(i, (f.get("T", "") + " " + f.get("W", "")).strip()) for i, f in smart(os.path.join(d, a))]
    qs = [(str(n + 1) if ordinal else i.lstrip("0"), f.get("W", "")) for n, (i, f) in enumerate(smart(os.path.join(d, q)))]
    for line in open(os.path.join(d, r)):
        f = line.split()
        if len(f) >= 2:
            qrels.setdefault(f[0].lstrip("0"), {})[f[1]] = 1.0
    return docs, qs, qrels


def metrics(ranked, rel):
    dcg = lambda gains: sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    best = dcg(sorted(rel.values(), reverse=True)[:10])
    got = dcg([rel.get(x, 0.0) for x in ranked[:10]])
    hits = lambda k: sum(1 for x in ranked[:k] if x in rel)
    found, ap, rr = 0, 0.0, 0.0
    for i, x in enumerate(ranked[:100]):
        if x in rel:
            found += 1
            ap += found / (i + 1)
            rr = rr or 1 / (i + 1)
    n = len(rel)
    return [got / best if best else 0.0, hits(10) / n, hits(100) / n, ap / n, rr]


def magpie_tokens(binary, texts):
    """Magpie's english analyzer's terms of each text (newlines inside a text become
    spaces: `magpie analyze` reads one text per line)."""
    lines = "".join(" ".join(t.splitlines()) + "\n" for t in texts)
    out = subprocess.run([binary, "analyze", "--params", '{"type": "english"}'], input=lines,
                         capture_output=True, text=True, check=True).stdout
    toks = [json.loads(l) for l in out.splitlines()]
    assert len(toks) == len(texts), (len(toks), len(texts))
    return toks


def main():
    args = sys.argv[1:]
    magpie = None
    if "--magpie-tokens" in args:
        i = args.index("--magpie-tokens")
        magpie = args[i + 1]
        del args[i:i + 2]
    d = args[0]
    k1 = float(args[1]) if len(args) > 1 else 1.2
    b = float(args[2]) if len(args) > 2 else 0.75
    docs, qs, qrels = load(d)
    stem = Stemmer.Stemmer("english")
    ids = [i for i, _ in docs]
    judged = [(q, t) for q, t in qs if q in qrels and t.strip()]
    if magpie:
        corpus = magpie_tokens(magpie, [t for _, t in docs])
        qtok = magpie_tokens(magpie, [t for _, t in judged])
    else:
        corpus = bm25s.tokenize([t for _, t in docs], stopwords=STOP, stemmer=stem, show_progress=False)
        qtok = bm25s.tokenize([t for _, t in judged], stopwords=STOP, stemmer=stem, show_progress=False)
    ret = bm25s.BM25(method="lucene", k1=k1, b=b)
    ret.index(corpus, show_progress=False)
    t0 = time.perf_counter()
    res, _ = ret.retrieve(qtok, k=min(100, len(ids)), show_progress=False, n_threads=1)
    secs = time.perf_counter() - t0
    sums = [0.0] * 5
    for (q, _), row in zip(judged, res):
        m = metrics([ids[j] for j in row], qrels[q])
        sums = [a + x for a, x in zip(sums, m)]
    names = ["nDCG@10", "recall@10", "recall@100", "MAP@100", "MRR@100"]
    print(json.dumps({"dataset": d, "queries": len(judged), "retrieve_seconds": secs,
                      "tokens": "magpie" if magpie else "bm25s",
                      "bm25s": {k: v / len(judged) for k, v in zip(names, sums)}}))


main()
