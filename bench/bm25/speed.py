"""BM25 queries per second on one thread for the peers of `magpie text bench`, on the same
corpus and queries: the `bm25s` package (Lucene's BM25, k1 1.2, b 0.75, Lucene's English
stop words, Snowball English stemmer; its numpy backend, n_threads=1) and the `tantivy`
package (tantivy's BM25 with its `en_stem` tokenizer, an in-RAM index, one searcher).
Every library gets one untimed warm-up pass, then PASSES timed passes, one query at a
time; bm25s is also timed with all queries in one `retrieve` call (its batch mode, where
it is fastest). k hits per query.

    python speed.py CORPUS.jsonl QUERIES.txt [K] [PASSES]   -> one JSON line
"""

import json
import sys
import time

import bm25s
import Stemmer
import tantivy

STOP = ("a an and are as at be but by for if in into is it no not of on or such that the their then "
        "there these they this to was will with").split()


def timed(run, queries, passes):
    for q in queries:
        run(q)
    lat = []
    t0 = time.perf_counter()
    for _ in range(passes):
        for q in queries:
            t = time.perf_counter()
            run(q)
            lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    lat.sort()
    pct = lambda p: lat[round((len(lat) - 1) * p)] * 1e3
    return {"qps": len(lat) / total, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def main():
    corpus, queries = sys.argv[1], sys.argv[2]
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    passes = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    docs = [json.loads(l) for l in open(corpus) if l.strip()]
    texts = [(d.get("title", "") + "\n" + d["text"]).strip() for d in docs]
    qs = [l.strip() for l in open(queries) if l.strip()]
    out = {"documents": len(texts), "queries": len(qs), "k": k}

    stem = Stemmer.Stemmer("english")
    t = time.perf_counter()
    ret = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    ret.index(bm25s.tokenize(texts, stopwords=STOP, stemmer=stem, show_progress=False), show_progress=False)
    build = time.perf_counter() - t

    def bm25s_one(q):
        tok = bm25s.tokenize([q], stopwords=STOP, stemmer=stem, show_progress=False)
        if tok.vocab:
            ret.retrieve(tok, k=k, show_progress=False, n_threads=1)

    out["bm25s"] = {"index_seconds": build, **timed(bm25s_one, qs, passes)}
    # bm25s's own way: every query in one call (its benchmarks count throughput so).
    t = time.perf_counter()
    for _ in range(passes):
        ret.retrieve(bm25s.tokenize(qs, stopwords=STOP, stemmer=stem, show_progress=False), k=k,
                     show_progress=False, n_threads=1)
    out["bm25s_batch"] = {"index_seconds": build, "qps": passes * len(qs) / (time.perf_counter() - t)}

    sb = tantivy.SchemaBuilder()
    sb.add_text_field("text", stored=False, tokenizer_name="en_stem")
    schema = sb.build()
    t = time.perf_counter()
    index = tantivy.Index(schema)
    w = index.writer(heap_size=512 << 20, num_threads=1)
    for x in texts:
        w.add_document(tantivy.Document(text=x))
    w.commit()
    w.wait_merging_threads()
    index.reload()
    build = time.perf_counter() - t
    searcher = index.searcher()

    def tantivy_one(q):
        # Terms as plain words (no query syntax), any of them may match, as BM25 does.
        words = [x for x in "".join(c if c.isalnum() else " " for c in q).split()]
        if words:
            searcher.search(index.parse_query(" ".join(words), ["text"]), k)

    out["tantivy"] = {"index_seconds": build, "segments": len(searcher.segment_readers()) if hasattr(searcher, "segment_readers") else None,
                      **timed(tantivy_one, qs, passes)}
    print(json.dumps(out))


main()
