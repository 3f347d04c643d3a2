"""Scenes of the synthetic negation world, and how they are drawn.

A scene is a few coloured shapes, each in its own cell of a grid, so that no object hides another:
every object in `Scene.objects` is visible in the rendered image, which is what makes captions
correct by construction. Rendering is PIL polygons on a grey background plus pixel noise, about
0.1 ms for a 64 x 64 image.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: colour and shape names, side of its bounding box and its top-left corner (pixels)."""

    colour: str
    shape: str
    size: int
    x: int
    y: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """The objects of one image and the seed of its background noise.

    Two scenes that differ only in their objects but share `noise_seed` render to images that
    differ only where those objects are (a distractor is made that way).
    """

    objects: tuple[SceneObject, ...]
    noise_seed: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(obj.name for obj in self.objects)

    def has(self, name: str) -> bool:
        return name in self.names

    def without(self, name: str) -> "Scene":
        """The same scene with the object called `name` removed."""
        if not self.has(name):
            raise ValueError(f"scene has no {name}: {self.names}")
        return replace(self, objects=tuple(obj for obj in self.objects if obj.name != name))

    def with_swapped(self, name: str, colour: str, shape: str) -> "Scene":
        """The same scene with the object `name` redrawn as another colour and shape, in its place."""
        if not self.has(name):
            raise ValueError(f"scene has no {name}: {self.names}")
        return replace(self, objects=tuple(replace(obj, colour=colour, shape=shape) if obj.name == name else obj
                                           for obj in self.objects))


def grid_side(max_objects: int) -> int:
    """Cells per row of the placement grid: the smallest square grid with a cell per object."""
    return math.ceil(math.sqrt(max_objects))


def place_objects(rng, colour_shapes: Sequence[tuple[str, str]], image_size: int, max_objects: int,
                  size_fractions: Sequence[float]) -> tuple[SceneObject, ...]:
    """Put each (colour, shape) in its own random grid cell, at a random size and offset inside it.

    rng is a `random.Random`. Sizes are fractions of the image side, capped to fit a cell with a
    1-pixel margin so that objects never touch.
    """
    side = grid_side(max_objects)
    cell = image_size // side
    cells = rng.sample(range(side * side), len(colour_shapes))
    objects = []
    for (colour, shape), index in zip(colour_shapes, cells):
        size = min(max(4, round(rng.choice(size_fractions) * image_size)), cell - 2)
        cell_x, cell_y = (index % side) * cell, (index // side) * cell
        x = cell_x + 1 + rng.randint(0, cell - size - 2)
        y = cell_y + 1 + rng.randint(0, cell - size - 2)
        objects.append(SceneObject(colour, shape, size, x, y))
    return tuple(objects)


def _star(points: int = 5, inner: float = 0.4) -> list[tuple[float, float]]:
    vertices = []
    for i in range(2 * points):
        radius = 0.5 if i % 2 == 0 else 0.5 * inner
        angle = -math.pi / 2 + i * math.pi / points
        vertices.append((0.5 + radius * math.cos(angle), 0.5 + radius * math.sin(angle)))
    return vertices


# Outlines in the unit square, scaled to each object's box. The circle is drawn as an ellipse.
_t = 1 / 3  # arm width of the cross
SHAPE_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(0.05, 0.05), (0.95, 0.05), (0.95, 0.95), (0.05, 0.95)],
    "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "star": _star(),
    "cross": [(_t, 0), (2 * _t, 0), (2 * _t, _t), (1, _t), (1, 2 * _t), (2 * _t, 2 * _t), (2 * _t, 1), (_t, 1),
              (_t, 2 * _t), (0, 2 * _t), (0, _t), (_t, _t)],
}
DRAWABLE_SHAPES = ("circle", *SHAPE_OUTLINES)


def render_scene(scene: Scene, image_size: int, colours: Mapping[str, tuple[int, int, int]],
                 noise: float) -> np.ndarray:
    """Draw `scene` as an RGB uint8 array [image_size, image_size, 3].

    Background: a grey level taken from the scene's noise seed; then every pixel (objects too)
    gets Gaussian noise of standard deviation `noise` * 255. The noise is a shifted field from a
    fixed bank (drawing fresh Gaussian noise would triple the cost of a render).
    """

    seed = scene.noise_seed
    grey = 90 + (seed >> 24) % 76
    image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = tuple(colours[obj.colour])
        box = (obj.x, obj.y, obj.x + obj.size - 1, obj.y + obj.size - 1)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            scale = obj.size - 1
            draw.polygon([(obj.x + u * scale, obj.y + v * scale) for u, v in SHAPE_OUTLINES[obj.shape]], fill=fill)
    pixels = np.asarray(image, dtype=np.int16)
    if noise > 0:
        bank = _noise_bank(image_size, noise)
        shift = ((seed >> 8) % image_size, (seed >> 16) % image_size)
        pixels = pixels + np.roll(bank[seed % len(bank)], shift, axis=(0, 1))
    return np.clip(pixels, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _noise_bank(image_size: int, noise: float, fields: int = 64) -> np.ndarray:
    """`fields` Gaussian noise images (int16), the same on every machine and in every run."""
    rng = np.random.default_rng(20240531)
    return np.round(rng.normal(0.0, noise * 255.0, size=(fields, image_size, image_size, 3))).astype(np.int16)
