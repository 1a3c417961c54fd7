#!/usr/bin/env python3
"""
gen-corpus.py - writes the project's own calibration text: tests/data/corpus.txt
(about 120 KB of short children's stories, paragraphs separated by blank
lines) and tests/data/docs.jsonl (40 short documents, one {"text": ...} per
line), so that tests need nothing from ../shared.

The stories come from the templates and word lists below (original text, no
copied books), with numbers, punctuation, straight and curly quotes,
contractions, a few accented letters, dashes and an emoji now and then, so
that a tokenizer trained on them (gen-tokenizer.py) sees every kind of
pre-token. Standard library only, and deterministic: the generator draws from
its own xorshift64* (the one tests/unit/check.h uses), not from `random`, so
the output is byte-identical on every Python 3. Both outputs are committed;
rerun only to change the text, then rerun gen-tokenizer.py:

    python3 tests/gen/gen-corpus.py [OUTDIR]      # OUTDIR: tests/data
"""
import json
import os
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/data"
CORPUS_BYTES = 120_000
N_DOCS = 40


class Rng:
    """xorshift64*: the same sequence as check_rand() in tests/unit/check.h."""

    def __init__(self, seed):
        self.s = seed

    def next(self):
        s = self.s
        s ^= s >> 12
        s ^= (s << 25) & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 27
        self.s = s
        return (s * 2685821657736338717) & 0xFFFFFFFFFFFFFFFF

    def below(self, n):
        return (self.next() >> 11) % n

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def chance(self, percent):
        return self.below(100) < percent


NAMES = [
    "Lily", "Tom", "Mia", "Ben", "Zoë", "Chloé", "Jürgen", "Renée", "Sam", "Max",
    "Ada", "Leo", "Nora", "Finn", "Rosa", "Omar", "Ivy", "Kai", "José", "Anna",
    "Pip", "Lucy", "Jack", "Ella",
]
# (article + name, pronoun, possessive)
ANIMALS = [
    ("a small fox", "he", "his"), ("an old owl", "she", "her"),
    ("a brave mouse", "he", "his"), ("a sleepy cat", "she", "her"),
    ("a green frog", "he", "his"), ("a little bear", "she", "her"),
    ("a kind duck", "she", "her"), ("a tiny snail", "he", "his"),
    ("a busy bee", "she", "her"), ("a red bird", "he", "his"),
    ("a shy rabbit", "she", "her"), ("a clever crow", "he", "his"),
    ("a fluffy dog", "he", "his"), ("a gentle cow", "she", "her"),
]
GIRLS = {"Lily", "Mia", "Zoë", "Chloé", "Renée", "Ada", "Nora", "Rosa", "Ivy",
         "Anna", "Lucy", "Ella"}
PLACES = [
    "the forest", "the park", "the river", "the garden", "the village",
    "the beach", "the hill", "the café", "the old barn", "the library",
    "the meadow", "the pond", "the market", "the school", "the farm",
    "the lighthouse", "the bakery", "the zoo",
]
THINGS = [
    "a shiny ball", "a blue kite", "a red hat", "a big box", "a wooden boat",
    "a jar of honey", "a map", "a silver bell", "a warm blanket", "a yellow flower",
    "a funny drum", "a little key", "a paper crown", "a green umbrella",
    "a basket of apples", "a soft pillow", "a toy train", "a piece of cake",
    "a crêpe", "a smooth stone",
]
FRUITS = ["apples", "pears", "plums", "cherries", "berries", "carrots", "cookies",
          "shells", "stones", "acorns", "stars", "buttons"]
FEELINGS = ["happy", "sad", "scared", "proud", "curious", "tired", "excited",
            "surprised", "brave", "calm", "lonely", "grumpy"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy", "bright"]
TIMES = ["morning", "afternoon", "evening", "night", "day"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown",
          "white", "black", "gold"]
VERBS_PAST = [
    "played", "jumped", "laughed", "danced", "sang", "ran", "walked", "swam",
    "talked", "hummed", "raced", "rested", "read", "painted", "splashed", "giggled",
]
SNACKS = ["apples", "pears", "plums", "cherries", "berries", "carrots", "cookies",
          "cheese", "grapes", "soup", "pancakes", "nuts"]
ACTIVITIES = [
    "play with the ball", "build a sandcastle", "fly the kite", "bake a cake",
    "read a book", "look for treasure", "pick flowers", "count the clouds",
    "sing a song", "paint a picture", "go for a walk", "climb the tall tree",
    "feed the ducks", "plant some seeds",
]
LESSONS = [
    "sharing makes everyone happy", "it is good to be kind", "friends help each other",
    "it is okay to ask for help", "being patient pays off", "you should always tell the truth",
    "small things can be very important", "trying again is brave",
    "listening is a gift", "every day is a new chance",
]
SOUNDS = ["Splash!", "Boom!", "Whoosh!", "Crack!", "Ding-dong!", "Pop!", "Hooray!"]
EMOJI = ["🙂", "🌟", "🐸", "🍎", "🌈"]
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten"]


def cap(s):
    return s[:1].upper() + s[1:]


def the(s):
    """'a small fox' -> 'the small fox'."""
    for art in ("a ", "an "):
        if s.startswith(art):
            return "the " + s[len(art):]
    return s


class Story:
    """One paragraph: a hero, a friend and a thing, told in a few sentences."""

    def __init__(self, rng):
        self.r = rng
        name = rng.pick(NAMES)
        if name in GIRLS:
            self.hero, self.he, self.his = name, "she", "her"
        else:
            self.hero, self.he, self.his = name, "he", "his"
        self.friend = rng.pick(ANIMALS)
        self.place = rng.pick(PLACES)
        self.thing = rng.pick(THINGS)
        self.count = 2 + rng.below(19)

    def q(self, words):
        """Quoted speech, in curly quotes (paragraph() may straighten them)."""
        return "\u201c" + words + "\u201d"

    def opening(self):
        r, h = self.r, self.hero
        return r.pick([
            f"Once upon a time, there was a little {'girl' if self.he == 'she' else 'boy'} "
            f"named {h}.",
            f"One {r.pick(WEATHER)} {r.pick(TIMES)}, {h} went to {self.place}.",
            f"{h} lived near {self.place} with {self.his} mom and dad.",
            f"It was a {r.pick(WEATHER)} {r.pick(DAYS)}, and {h} felt {r.pick(FEELINGS)}.",
            f"Long ago, in a house by {self.place}, lived a child called {h}.",
            f"On day {1 + r.below(99)} of the summer, {h} woke up early.",
            f"{h} was {3 + r.below(7)} years old and loved to {r.pick(ACTIVITIES)}.",
        ])

    def middle(self, used):
        """A sentence from a template not in used (whose index it adds)."""
        r, h, he = self.r, self.hero, self.he
        f, fhe, fhis = self.friend
        tf = the(f)
        n = self.count
        c = [
            f"At {self.place}, {he} met {f}.",
            f"{cap(he)} found {self.thing} under a {r.pick(COLORS)} leaf.",
            f"{h} and {tf} {r.pick(VERBS_PAST)} together all {r.pick(TIMES)}.",
            f"{cap(tf)} said, {self.q(f'Hello, {h}! Do you want to {r.pick(ACTIVITIES)}?')}",
            f"{self.q('Yes, please!')} said {h}. {self.q(r.pick(['Let’s go!', 'Let us go!', 'I can’t wait!', 'That sounds fun.']))}",
            f"{h} counted {n} {r.pick(FRUITS)}: {', '.join(str(i) for i in range(1, min(n, 6) + 1))}"
            f"{', and more' if n > 6 else ''}.",
            f"{cap(he)} had {n} {r.pick(FRUITS)}, and {tf} had {n + 1 + r.below(5)}.",
            f"{self.q(f'I don’t know where my {the(self.thing)[4:]} is,')} said {tf} sadly.",
            f"{self.q('We’ll find it,')} said {h}. {self.q('I’m sure it’s close.')}",
            f"They walked {1 + r.below(9)}.{r.below(10)} miles to {r.pick(PLACES)}.",
            f"{r.pick(SOUNDS)} Something fell into the water.",
            f"The {r.pick(COLORS)} door had the number {10 + r.below(990)} on it.",
            f"{cap(he)} was {r.pick(FEELINGS)} \u2014 but only for a moment.",
            f"At {1 + r.below(12)} o’clock, {tf} came back with {self.thing}.",
            f"{h} gave {tf} {self.thing}, and {fhe} smiled.",
            f"{cap(tf)} shook {fhis} head. {self.q('That isn’t mine, but thank you.')}",
            f"{cap(he)} asked, {self.q('Why is the sky ' + r.pick(COLORS) + ' today?')}",
            f"{cap(tf)} laughed. {self.q('Because it’s a magic day!')}",
            f"They shared a snack: {r.pick(SNACKS)}, bread and milk.",
            f"The wind blew, and the {r.pick(COLORS)} leaves danced around them\u2026",
            f"{h}’s friend, {tf}, knew a secret path through {r.pick(PLACES)}.",
            f"It took {2 + r.below(58)} minutes to get there; it felt like {2 + r.below(9)} hours!",
            f"{cap(he)} said {self.q('wow')} {2 + r.below(4)} times.",
            f"They’d never seen anything like it before.",
            f"{h} wasn’t scared, and {tf} wasn’t either.",
            f"They’ve got {n} new friends now, and {h}’s very {r.pick(FEELINGS)}.",
        ]
        i = r.below(len(c))
        while i in used:
            i = (i + 1) % len(c)
        used.add(i)
        return c[i]

    def ending(self):
        r, h, he = self.r, self.hero, self.he
        tf = the(self.friend[0])
        end = r.pick([
            f"At the end of the day, {h} went home {r.pick(FEELINGS)} and sleepy.",
            f"{h} learned that {r.pick(LESSONS)}.",
            f"From that day on, {h} and {tf} were best friends.",
            f"That night, {he} dreamed about {r.pick(THINGS)}.",
            f"{h} smiled and said, {self.q('This was the best day ever!')}",
            "The end.",
            f"And so {h} learned that {r.pick(LESSONS)}. The end.",
        ])
        if r.chance(6):
            end += " " + r.pick(EMOJI)
        return end

    def paragraph(self, n_middle):
        """Most paragraphs are plain ASCII typing: ' and " for ’ “ ”."""
        used = set()
        s = [self.opening()]
        s += [self.middle(used) for _ in range(n_middle)]
        s.append(self.ending())
        text = " ".join(s)
        if self.r.chance(70):
            text = text.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
        return text


def dialogue(rng):
    """A short exchange: the only paragraphs with line breaks inside."""
    a, b = rng.pick(NAMES), rng.pick(NAMES)
    if a == b:
        b = "Grandma"
    n = rng.below(10)
    lines = [
        f"{a}: Can I have {NUMBER_WORDS[n]} {rng.pick(FRUITS)}, please?",
        f"{b}: You may have {n + 1}. What's the magic word?",
        f"{a}: Thank you! \u2014 {rng.pick(SOUNDS)}",
    ]
    if rng.chance(50):
        lines.append(f"{b}: You're welcome, {a}. Don't eat them all at once!")
    return "\n".join(lines)


def paragraph(rng):
    if rng.chance(8):
        return dialogue(rng)
    return Story(rng).paragraph(3 + rng.below(6))


def main():
    rng = Rng(0x9E3779B97F4A7C15)
    paras, size = [], 0
    while size < CORPUS_BYTES:
        p = paragraph(rng)
        paras.append(p)
        size += len(p.encode("utf-8")) + 2
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "corpus.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join(paras) + "\n")

    rng = Rng(0xD1B54A32D192ED03)
    with open(os.path.join(OUT, "docs.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for _ in range(N_DOCS):
            doc = "\n\n".join(paragraph(rng) for _ in range(1 + rng.below(3)))
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")


main()
