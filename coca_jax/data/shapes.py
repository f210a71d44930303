"""The embedded dataset's world: scenes of one or two coloured shapes, their pictures and captions.

Each scene is drawn from its own seeded generator, so example i of a split is the same on every
machine. A scene has a main object (the larger one) whose colour and shape are its class, for
zero-shot classification; captions describe colour, shape, size and position (a 3x3 grid cell
for one object, the relation between the two otherwise) in several phrasings.

A scene is also stored as 12 integers (`scene` feature), so generated captions can be scored:
  [num_objects, colour0, shape0, size0, col0, row0, colour1, shape1, size1, col1, row1, relation]
(object 0 is the main one; -1 where absent; relation is object 0's place relative to object 1).
"""
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235),
           "yellow": (235, 215, 40), "purple": (160, 60, 210), "white": (235, 235, 235)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 0.10, "medium": 0.15, "large": 0.21}  # radius, as a fraction of the side
SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium-sized"),
              "large": ("large", "big")}
CELL_PHRASES = {  # (col, row) -> phrasings
    (0, 0): ("in the top left corner", "in the top left"),
    (1, 0): ("at the top", "at the top"),
    (2, 0): ("in the top right corner", "in the top right"),
    (0, 1): ("on the left", "on the left side"),
    (1, 1): ("in the center", "in the middle"),
    (2, 1): ("on the right", "on the right side"),
    (0, 2): ("in the bottom left corner", "in the bottom left"),
    (1, 2): ("at the bottom", "at the bottom"),
    (2, 2): ("in the bottom right corner", "in the bottom right"),
}
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {"left of": ("to the left of", "left of"), "right of": ("to the right of",),
                    "above": ("above", "over"), "below": ("below", "under")}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SINGLE_TEMPLATES = ("{a} {where}", "there is {a} {where}", "a picture of {a} {where}",
                    "{where} there is {a}")
PAIR_TEMPLATES = ("{a} {rel} {b}", "there is {a} {rel} {b}", "a picture of {a} {rel} {b}",
                  "two shapes: {a} {rel} {b}")
ZERO_SHOT_TEMPLATES = ("a {}", "there is a {}", "a picture of a {}")
CLASS_NAMES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
SCENE_LEN = 12
RENDER_SCALE = 2  # drawn this many times larger, then box-filtered down: smooth edges


def class_index(colour: int, shape: int) -> int:
  """The index in CLASS_NAMES of a colour (index in COLOURS) and shape (index in SHAPES)."""
  return colour * len(SHAPES) + shape


def sample_scene(rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[float, float, float]]]:
  """A random scene: its 12-integer code and each object's (x, y, radius) in [0, 1] units."""
  scene = np.full(SCENE_LEN, -1, np.int32)
  sizes = list(SIZES)
  if rng.random() < 0.5:
    size = int(rng.integers(3))
    col, row = (int(v) for v in rng.integers(3, size=2))
    r = SIZES[sizes[size]] * rng.uniform(0.9, 1.1)
    x, y = (np.clip((c + 0.5) / 3 + rng.uniform(-0.06, 0.06), r + 0.02, 0.98 - r)
            for c in (col, row))
    scene[:6] = [1, rng.integers(len(COLOURS)), rng.integers(len(SHAPES)), size, col, row]
    return scene, [(x, y, r)]
  # Two objects: the main one larger; different colour-and-shape; apart along one axis.
  size0 = int(rng.integers(1, 3))
  size1 = int(rng.integers(size0))
  while True:
    c0, c1 = rng.integers(len(COLOURS), size=2)
    s0, s1 = rng.integers(len(SHAPES), size=2)
    if (c0, s0) != (c1, s1):
      break
  r0 = SIZES[sizes[size0]] * rng.uniform(0.9, 1.1)
  r1 = SIZES[sizes[size1]] * rng.uniform(0.9, 1.1)
  relation = int(rng.integers(4))  # of object 0 relative to object 1
  first_r, second_r = (r0, r1) if relation in (0, 2) else (r1, r0)  # left/above comes first
  margin, gap = 0.03, 0.06
  free = 1 - 2 * margin - 2 * (r0 + r1) - gap
  f1 = rng.uniform(0, free)
  f2 = rng.uniform(0, free - f1)
  a = margin + first_r + f1
  b = a + first_r + gap + second_r + f2
  along = (a, b) if relation in (0, 2) else (b, a)
  rmax = max(r0, r1)
  centre = rng.uniform(rmax + margin, 1 - rmax - margin)
  across = [np.clip(centre + rng.uniform(-0.05, 0.05), r + margin, 1 - r - margin)
            for r in (r0, r1)]
  horizontal = relation < 2
  xy = [(along[i], across[i]) if horizontal else (across[i], along[i]) for i in range(2)]
  cells = [[min(int(v * 3), 2) for v in p] for p in xy]
  scene[:] = [2, c0, s0, size0, *cells[0], c1, s1, size1, *cells[1], relation]
  return scene, [(*xy[0], r0), (*xy[1], r1)]


def render(scene: np.ndarray, places, size: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 (size, size, 3) picture of a scene on a dark background (colours jittered)."""
  big = size * RENDER_SCALE
  grey = int(rng.integers(10, 70))
  image = Image.new("RGB", (big, big), (grey, grey, grey))
  draw = ImageDraw.Draw(image)
  colours = list(COLOURS.values())
  # The smaller object is drawn last, so it is never hidden.
  for i in sorted(range(int(scene[0])), key=lambda i: -places[i][2]):
    colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255))
                   for c in colours[scene[1 + 5 * i]])
    x, y, r = (v * big for v in places[i])
    shape = SHAPES[scene[2 + 5 * i]]
    if shape == "circle":
      draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "square":
      h = 0.85 * r
      draw.rectangle((x - h, y - h, x + h, y + h), fill=colour)
    elif shape == "triangle":
      draw.polygon([(x, y - r), (x - 0.95 * r, y + 0.8 * r), (x + 0.95 * r, y + 0.8 * r)],
                   fill=colour)
    else:  # cross
      t = 0.32 * r
      draw.rectangle((x - r, y - t, x + r, y + t), fill=colour)
      draw.rectangle((x - t, y - r, x + t, y + r), fill=colour)
  return np.asarray(image.reduce(RENDER_SCALE))


def _phrase(scene, i, rng, with_size=True) -> str:
  colour, shape, size = scene[1 + 5 * i:4 + 5 * i]
  words = [rng.choice(SIZE_WORDS[list(SIZES)[size]])] if with_size else []
  return " ".join(["a", *words, list(COLOURS)[colour], SHAPES[shape]])


def captions(scene: np.ndarray, rng: np.random.Generator, count: int = 4) -> List[str]:
  """`count` different phrasings of a scene (size left out of about one in five).

  Args:
    scene: int32 (12,) scene code (see the module docstring).
    rng: draws the templates and words.
    count: captions wanted; fewer come back when 10 * count draws give fewer distinct ones.
  """
  out = []
  for _ in range(count * 10):
    with_size = rng.random() > 0.2
    if scene[0] == 1:
      where = rng.choice(CELL_PHRASES[tuple(scene[4:6])])
      text = rng.choice(SINGLE_TEMPLATES).format(a=_phrase(scene, 0, rng, with_size), where=where)
    else:
      relation = RELATIONS[scene[11]]
      first = int(rng.integers(2))  # which object is named first
      if first == 1:
        relation = OPPOSITE[relation]
      text = rng.choice(PAIR_TEMPLATES).format(
          a=_phrase(scene, first, rng, with_size), b=_phrase(scene, 1 - first, rng, with_size),
          rel=rng.choice(RELATION_PHRASES[relation]))
    if text not in out:
      out.append(text)
    if len(out) == count:
      break
  return out


def make_example(seed: int, index: int, image_size: int = 64):
  """Example `index` of the split seeded by `seed`: image, captions, label, scene code."""
  rng = np.random.default_rng([seed, index])
  scene, places = sample_scene(rng)
  return {"image": render(scene, places, image_size, rng), "captions": captions(scene, rng),
          "label": class_index(scene[1], scene[2]), "scene": scene}


# ---- scoring generated captions ----

_SIZE_OF = {w: s for s, words in enumerate(SIZE_WORDS.values()) for w in words}
_MENTION = re.compile(
    r"\b(?:(%s)\s+)?(?:(%s)\s+)?(%s)\b" % (
        "|".join(sorted(_SIZE_OF, key=len, reverse=True)), "|".join(COLOURS), "|".join(SHAPES)))
_CELL_OF = {p: cell for cell, phrases in CELL_PHRASES.items() for p in phrases}
_WHERE = re.compile("|".join(sorted(map(re.escape, _CELL_OF), key=len, reverse=True)))
_RELATION_OF = {p: r for r, phrases in RELATION_PHRASES.items() for p in phrases}
_REL = re.compile("|".join(sorted(map(re.escape, _RELATION_OF), key=len, reverse=True)))


def _true_relation(scene, i, j) -> str:
  """Where object i is relative to object j (the scene stores 0 relative to 1)."""
  relation = RELATIONS[scene[11]]
  return relation if (i, j) == (0, 1) else OPPOSITE[relation]


def caption_attribute_counts(caption: str, scene: Sequence[int]) -> Tuple[int, int]:
  """(correct, described): the attributes a caption states, and how many of them are true.

  Attributes are each mentioned object's size, colour and shape, plus the grid cell of a lone
  mention or the relation between two. Mentions are matched to the scene's objects by agreement.
  """
  scene = np.asarray(scene)
  caption = " ".join(caption.lower().split())
  mentions = list(_MENTION.finditer(caption))[:2]
  objects = [(int(scene[3 + 5 * i]), int(scene[1 + 5 * i]), int(scene[2 + 5 * i]))
             for i in range(int(scene[0]))]  # (size, colour, shape)
  correct = described = 0
  matched: List[Optional[int]] = []
  for m in mentions:
    said = (_SIZE_OF.get(m[1]), list(COLOURS).index(m[2]) if m[2] else None, SHAPES.index(m[3]))
    free = [i for i in range(len(objects)) if i not in matched]
    agree = lambda i: sum(s == t for s, t in zip(said, objects[i]) if s is not None)  # noqa
    best = max(free, key=agree, default=None)
    matched.append(best)
    described += sum(s is not None for s in said)
    correct += agree(best) if best is not None else 0
  if len(mentions) == 1:
    where = _WHERE.search(caption)
    if where:
      described += 1
      i = matched[0]
      correct += i is not None and tuple(scene[4 + 5 * i:6 + 5 * i]) == _CELL_OF[where[0]]
  elif len(mentions) == 2:
    rel = _REL.search(caption, mentions[0].end(), mentions[1].start())
    if rel:
      described += 1
      i, j = matched
      correct += (i is not None and j is not None and
                  _true_relation(scene, i, j) == _RELATION_OF[rel[0]])
  return int(correct), described


def caption_attribute_score(caption: str, scene: Sequence[int]) -> float:
  """Fraction of the attributes described in `caption` that are true of `scene` (0 if none)."""
  correct, described = caption_attribute_counts(caption, scene)
  return correct / described if described else 0.0


def scene_attributes(scene: Sequence[int]) -> int:
  """How many attributes a scene has to tell: one object its size, colour, shape and cell (4);
  two objects the size, colour and shape of each and their relation (7)."""
  return 4 if int(scene[0]) == 1 else 7


def caption_attribute_recall(caption: str, scene: Sequence[int]) -> float:
  """Fraction of the scene's attributes (`scene_attributes`) that `caption` states truly: the
  class-name form "a green square" of a one-object scene recalls 2 of 4."""
  correct, _ = caption_attribute_counts(caption, scene)
  return min(correct / scene_attributes(scene), 1.0)
