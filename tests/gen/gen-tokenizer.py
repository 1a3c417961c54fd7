#!/usr/bin/env python3
"""
gen-tokenizer.py - trains the project's own small tokenizer on
tests/data/corpus.txt and writes tests/data/tokenizer/tokenizer.json and
tokenizer_config.json in the Hugging Face `tokenizers` format: a GPT-2 style
byte-level BPE with 448 ids, so that tokenizer tests run without ../shared.

Vocabulary: ids 0-255 are the bytes 0-255 (as GPT-2's bytes_to_unicode
symbols), 256-445 the merged tokens in merge order, 446 "<s>" (BOS, which the
TemplateProcessing post-processor puts first, as Llama does) and 447 "</s>"
(EOS). Pre-tokenization emulates GPT-2's regex with str methods (Python's
`re` has no \\p{L}); on this corpus the pieces are the ones the `regex`
module gives for the real pattern. Training is standard BPE: count adjacent
pairs over the pre-tokenized words weighted by frequency, merge the most
frequent pair (ties to the lexicographically smallest), repeat until 446
tokens. Standard library only and deterministic. Rerun after gen-corpus.py:

    python3 tests/gen/gen-tokenizer.py [DATADIR]      # DATADIR: tests/data
"""
import collections
import json
import os
import sys
import unicodedata

DATA = sys.argv[1] if len(sys.argv) > 1 else "tests/data"
N_BASE = 446  # bytes + merged tokens; the two special tokens make 448
BOS, EOS = "<s>", "</s>"

# Unicode White_Space, which \s means in the Rust regex that HF uses.
WHITE_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)}
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def kind(c):
    """'s' for \\s, 'L' for \\p{L}, 'N' for \\p{N}, 'o' for anything else."""
    if c in WHITE_SPACE:
        return "s"
    cat = unicodedata.category(c)[0]
    return cat if cat in "LN" else "o"


def pretokenize(text):
    """
    The pieces GPT-2's pattern finds, alternative by alternative:
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    """
    pieces, i, n = [], 0, len(text)
    k = [kind(c) for c in text]
    while i < n:
        j = None
        if text[i] == "'":
            for c in CONTRACTIONS:
                if text.startswith(c, i + 1):
                    j = i + 1 + len(c)
                    break
        if j is None:
            # " ?" then a run of one class; a space alone falls through to \s
            a = i + 1 if text[i] == " " and i + 1 < n and k[i + 1] != "s" else i
            if k[a] != "s":
                j = a + 1
                while j < n and k[j] == k[a]:
                    j += 1
        if j is None:
            j = i
            while j < n and k[j] == "s":
                j += 1
            # \s+(?!\S): leave the last space to the next word when one follows
            if j < n and j - 1 > i:
                j -= 1
        pieces.append(text[i:j])
        i = j
    return pieces


def train(words, n_base):
    """
    BPE on words (tuple of symbols -> count). Returns the merges, in order,
    and the vocabulary (symbol -> id), which grows until it has n_base tokens.
    """
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = []
    words = dict(words)
    while len(vocab) < n_base:
        pairs = collections.Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            sys.exit("gen-tokenizer: the corpus is too small for %d tokens" % n_base)
        best = min(pairs.items(), key=lambda pc: (-pc[1], pc[0]))[0]
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        nw = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            out = tuple(out)
            nw[out] = nw.get(out, 0) + c
        words = nw
    return merges, vocab


def encode_word(w, ranks):
    """HF BPE on one word: apply the lowest-ranked merge present until none is."""
    w = list(w)
    while len(w) > 1:
        r, i = min((ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(w, w[1:])))
        if r == len(ranks):
            break
        w[i:i + 2] = [w[i] + w[i + 1]]
    return w


def main():
    with open(os.path.join(DATA, "corpus.txt"), encoding="utf-8") as f:
        text = f.read()
    b2u = bytes_to_unicode()
    counts = collections.Counter(pretokenize(text))
    words = {tuple(b2u[b] for b in p.encode("utf-8")): c for p, c in counts.items()}
    merges, vocab = train(words, N_BASE)
    vocab[BOS] = N_BASE
    vocab[EOS] = N_BASE + 1

    ranks = {m: i for i, m in enumerate(merges)}
    n_tok = sum(len(encode_word(w, ranks)) * c for w, c in words.items())
    print("gen-tokenizer: %d ids, %d merges, %.3f tokens/byte on corpus.txt"
          % (len(vocab), len(merges), n_tok / len(text.encode("utf-8"))), file=sys.stderr)

    def added(id_, content):
        return {"id": id_, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}

    def byte_level(prefix_space):
        return {"type": "ByteLevel", "add_prefix_space": prefix_space, "trim_offsets": True,
                "use_regex": True}

    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(N_BASE, BOS), added(N_BASE + 1, EOS)],
        "normalizer": None,
        "pre_tokenizer": byte_level(False),
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [N_BASE], "tokens": [BOS]}},
        },
        "decoder": byte_level(True),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    out = os.path.join(DATA, "tokenizer")
    os.makedirs(out, exist_ok=True)
    for name, obj in (("tokenizer.json", tok), ("tokenizer_config.json", config)):
        with open(os.path.join(out, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


main()
