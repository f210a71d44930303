"""Pictures people look at after an evaluation: a caption gallery (each image with its generated
and reference caption) and retrieval examples (a text query and its top images). Drawn with PIL,
returned as uint8 (H, W, 3) arrays, for a PNG file or a TensorBoard image."""
import textwrap
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 128  # image side in the grid, pixels
TEXT_COLOUR, GENERATED_COLOUR, BACKGROUND = (20, 20, 20), (0, 70, 160), (255, 255, 255)
TEXT_WIDTH_CHARS = 40


def _font(size: int = 11):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size
    return ImageFont.load_default()


def _tile(image, side: int = TILE) -> Image.Image:
  image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
  return image.convert("RGB").resize((side, side), Image.BICUBIC)


def _text_block(lines_with_colour, width_px: int, font, line_h: int) -> Image.Image:
  lines = []
  for text, colour in lines_with_colour:
    for line in textwrap.wrap(text, TEXT_WIDTH_CHARS * width_px // 260) or [""]:
      lines.append((line, colour))
  block = Image.new("RGB", (width_px, line_h * len(lines) + 4), BACKGROUND)
  draw = ImageDraw.Draw(block)
  for i, (line, colour) in enumerate(lines):
    draw.text((4, 2 + i * line_h), line, fill=colour, font=font)
  return block


def caption_gallery(images: Sequence, generated: Sequence[str],
                    references: Sequence[Optional[str]], columns: int = 4) -> np.ndarray:
  """A grid: each cell an image, its generated caption (blue) and a reference (black).

  Args:
    images: PIL images or uint8 (H, W, 3) arrays of any size, each resized to 128x128.
    generated: one caption per image.
    references: one reference caption (or None: not drawn) per image.
    columns: cells per row.

  Returns:
    The picture, uint8 (H, W, 3); a white 128x128 square when there are no images.
  """
  font, line_h = _font(), 13
  cell_w = 2 * TILE
  cells = []
  for image, gen, ref in zip(images, generated, references):
    lines = [(f"generated: {gen}", GENERATED_COLOUR)]
    if ref is not None:
      lines.append((f"reference: {ref}", TEXT_COLOUR))
    text = _text_block(lines, cell_w, font, line_h)
    cell = Image.new("RGB", (cell_w, TILE + text.height + 8), BACKGROUND)
    cell.paste(_tile(image), ((cell_w - TILE) // 2, 4))
    cell.paste(text, (0, TILE + 8))
    cells.append(cell)
  return _grid(cells, columns)


def retrieval_examples(queries: Sequence[str], images: Sequence[Sequence],
                       correct: Sequence[Sequence[bool]]) -> np.ndarray:
  """One row per text query: the query, then its top images (a green frame when relevant).

  Args:
    queries: the query texts.
    images: per query, its ranked images (PIL images or uint8 (H, W, 3) arrays), best first.
    correct: per query, a bool per image: whether it is the query's own image.

  Returns:
    The picture, uint8 (H, W, 3); a white 128x128 square when there are no queries.
  """
  font, line_h = _font(), 13
  k = max((len(row) for row in images), default=0)
  label_w = 2 * TILE
  rows = []
  for query, row, hits in zip(queries, images, correct):
    canvas = Image.new("RGB", (label_w + k * (TILE + 8), TILE + 12), BACKGROUND)
    canvas.paste(_text_block([(query, TEXT_COLOUR)], label_w, font, line_h), (0, 4))
    draw = ImageDraw.Draw(canvas)
    for j, (image, hit) in enumerate(zip(row, hits)):
      x = label_w + j * (TILE + 8) + 4
      canvas.paste(_tile(image), (x, 6))
      draw.rectangle((x - 3, 3, x + TILE + 2, TILE + 8), outline=(0, 170, 0) if hit
                     else (200, 200, 200), width=3)
      draw.text((x + 2, 8), str(j + 1), fill=(255, 255, 0), font=font)
    rows.append(canvas)
  return _grid(rows, 1)


def _grid(cells, columns: int) -> np.ndarray:
  if not cells:
    return np.full((TILE, TILE, 3), 255, np.uint8)
  columns = max(1, min(columns, len(cells)))
  rows = -(-len(cells) // columns)
  w = max(c.width for c in cells)
  heights = [max(c.height for c in cells[r * columns:(r + 1) * columns]) for r in range(rows)]
  sheet = Image.new("RGB", (w * columns, sum(heights)), BACKGROUND)
  y = 0
  for r in range(rows):
    for c, cell in enumerate(cells[r * columns:(r + 1) * columns]):
      sheet.paste(cell, (c * w, y))
    y += heights[r]
  return np.asarray(sheet)


def save_png(path, picture: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) picture to the local file `path` as PNG (through PIL)."""
  Image.fromarray(picture).save(str(path), format="PNG")
