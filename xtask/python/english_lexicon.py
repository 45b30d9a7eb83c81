"""Writes fixtures/lexicon/english.txt: the most frequent words of the corpus fixture's news
documents (sources `lee` and `lee_background` of target/fixtures/corpus/train.tsv, fetched by
`cargo xtask fixtures corpus`), lower-cased, letters only, then the numerals 0-100.

Run from the repository root: python3 xtask/python/english_lexicon.py [COUNT]
"""

import collections
import re
import sys

COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
NEWS = {"lee", "lee_background"}

counts = collections.Counter()
with open("target/fixtures/corpus/train.tsv", encoding="utf-8") as f:
    for line in f:
        source, _, text = line.rstrip("\n").split("\t", 2)
        if source in NEWS:
            counts.update(w.lower() for w in re.findall(r"[A-Za-z]+", text))

words = [w for w, n in counts.most_common() if n >= 2 and (len(w) > 1 or w in ("a", "i"))]
words = words[:COUNT]
numerals = [str(n) for n in range(101)]
header = [
    "# Common English words and numerals for second-order neuron effects (metarep-second-order).",
    f"# The {len(words)} most frequent words of the corpus fixture's news documents (sources lee",
    "# and lee_background of `cargo xtask fixtures corpus`), lower-cased, most frequent first,",
    "# then the numerals 0-100. Written by xtask/python/english_lexicon.py; one entry per line,",
    "# tokenized as \" \" + entry. Lines starting with '#' are ignored.",
    "",
]
with open("fixtures/lexicon/english.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(header + words + numerals) + "\n")
print(f"wrote {len(words)} words and {len(numerals)} numerals")
