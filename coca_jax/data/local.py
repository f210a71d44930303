"""A TFDS builder over people's own files: small and medium collections become TFDS datasets.

  builder = local.prepare(dict(name="mine", format="csv", path="/data/train.csv"), data_dir)

reads every record once (see `formats.py`), keeps what decodes (images converted to RGB, the
shorter side brought down to `max_side`, re-encoded as JPEG unless already a small upright sRGB
JPEG, see `records`; captions cleaned, one example per image with all its captions), drops the
rest and counts them by reason. The counts are logged at the end, stored in the dataset's
metadata (`builder.info.metadata["bad_records"]`, by split) and returned by
`bad_record_report(builder)`. The result is ArrayRecord under
`data_dir/image_text_files/<name>/<version>`, readable by `tfds.builder_from_directory` without this
code. `python -m coca_jax.data.convert` does the same from the command line.
"""
import dataclasses
import io
import json
from typing import Dict, Optional

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from coca_jax.data import formats, preprocess, provenance, records

MAX_SIDE = 512


@dataclasses.dataclass(eq=False)
class FilesConfig(tfds.core.BuilderConfig):
  """Where the files are and how to read them; `splits` maps a split name to a path."""
  format: str = "csv"
  splits: Dict[str, str] = dataclasses.field(default_factory=dict)
  image_key: Optional[str] = None
  text_key: Optional[str] = None
  separator: Optional[str] = None
  max_side: int = MAX_SIDE
  max_caption_chars: int = 1000


def encode_record(raw: Dict, max_side: int = MAX_SIDE, max_caption_chars: int = 1000,
                  counts: Optional[records.BadRecordCounts] = None) -> Dict:
  """A clean {"image": JPEG bytes, "captions": [str, ...]} from a raw record (one caption or
  several). A caption that cannot be used is dropped (counted in `counts` by reason); raises
  `BadRecord` when the image is bad or no caption is left."""
  if "error" in raw:
    raise records.BadRecord(raw["error"])
  captions, errors = [], []
  for caption in formats.captions_of(raw):
    try:
      captions.append(records.clean_caption(caption, max_caption_chars))
    except records.BadRecord as e:
      errors.append(e)
  if not captions:
    raise errors[0] if errors else records.BadRecord("caption_empty")
  data = raw["image"]
  array = records.decode_image(data, min_size=max_side)
  for e in errors if counts is not None else ():  # the image stays, without these captions
    counts.add(e.reason)
  if min(array.shape[:2]) > max_side:
    array = np.asarray(preprocess.resize_shorter_side(Image.fromarray(array), max_side))
  elif data[:3] == b"\xff\xd8\xff" and _plain_rgb(data):
    return {"image": data, "captions": captions}  # already fine: keep the original bytes
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="JPEG", quality=95)
  return {"image": out.getvalue(), "captions": captions}


def _plain_rgb(jpeg: bytes) -> bool:
  """An RGB JPEG whose stored pixels are the picture: re-encoding would only lose quality.
  Photos with an EXIF rotation or a colour profile other than sRGB are re-encoded upright in
  sRGB, so the prepared dataset reads right with any decoder, not only this project's."""
  image = Image.open(io.BytesIO(jpeg))
  return image.mode == "RGB" and records.is_upright_srgb(image)


class ImageTextFiles(tfds.core.GeneratorBasedBuilder):
  """Image-caption pairs from local or remote files (csv, tsv, jsonl, webdataset, tfrecord)."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "One example per image with all its captions (rows naming the same "
                            "image, caption lists); webdataset samples keyed by webdataset's rule "
                            "(directory included: 1.0.0 merged or overwrote samples whose file "
                            "names repeat across folders); photos upright in sRGB."}
  BUILDER_CONFIG_CLS = FilesConfig

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "key": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        description="Image-caption pairs converted from local files.")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, path)
            for split, path in self.builder_config.splits.items()}

  def _generate_examples(self, split: str, path: str):
    cfg = self.builder_config
    counts = records.BadRecordCounts()
    kept = num_captions = 0
    for key, raw in self._raw_records(path):
      if raw.get("error") == "shard_unordered":
        raise ValueError(
            f"{raw['detail']}: the shard's members are not grouped by sample (webdataset "
            "reads a sample's files one after another). Re-create it with its members "
            "sorted by name, e.g. `tar --sort=name -cf shard.tar -C DIR .`")
      try:
        example = encode_record(raw, cfg.max_side, cfg.max_caption_chars, counts)
      except records.BadRecord as e:
        counts.add(e.reason)
        continue
      kept += 1
      num_captions += len(example["captions"])
      yield key, {**example, "key": raw["key"]}
    report = {"kept": kept, "captions": num_captions, "dropped": counts.total(),
              **counts.as_dict()}
    if not kept:
      raise ValueError(f"{cfg.name}/{split}: every record of {path!r} was dropped: "
                       f"{json.dumps(report)}")
    self.info.metadata.setdefault("bad_records", {})[split] = report
    logging.info("%s/%s: %s", cfg.name, split, json.dumps(report))

  def _raw_records(self, path: str):
    """(example key, raw record): tables grouped by image path over all their files (one
    image, several captions), shards sample by sample."""
    cfg = self.builder_config
    files = formats.expand_paths(path, cfg.format)
    read = lambda file, load: formats.read_file(  # noqa: E731
        file, cfg.format, image_key=cfg.image_key, text_key=cfg.text_key,
        separator=cfg.separator, load_images=load)
    if cfg.format in formats.TABLES:
      rows = (raw for file in files for raw in read(file, False))
      for raw in formats.group_by_image(rows):
        if "error" not in raw:
          raw = {**raw, **formats.read_image(raw["image_path"])}
        yield raw["key"], raw
      return
    for shard, file in enumerate(files):
      for raw in read(file, True):
        yield f"{shard}:{raw['key']}", raw


def prepare(spec, data_dir: Optional[str] = None,
            reprepare: bool = False) -> tfds.core.DatasetBuilder:
  """The builder for a dataset spec with `format` and `path` (or `splits`), prepared if missing.

  A prepared copy is reused only while its source files are as they were (`provenance`);
  `reprepare` prepares it again from them. Raises ValueError for a changed source.
  """
  spec = dict(spec)
  splits = dict(spec.get("splits") or {spec.get("split", "train"): spec["path"]})
  config = FilesConfig(
      name=spec["name"], format=spec["format"], splits=splits, image_key=spec.get("image_key"),
      text_key=spec.get("text_key"), separator=spec.get("separator"),
      max_side=spec.get("max_side", MAX_SIDE),
      max_caption_chars=spec.get("max_caption_chars", 1000))
  builder = ImageTextFiles(config=config, data_dir=data_dir, file_format="array_record")
  inputs = provenance.describe(f for path in splits.values()
                               for f in formats.expand_paths(path, config.format))
  if builder.is_prepared() and not reprepare:
    provenance.check(builder.data_dir, config.name, inputs)
    return builder
  if builder.is_prepared():
    logging.warning("%s: preparing again from its files (reprepare)", config.name)
    epath.Path(builder.data_dir).rmtree()
    builder = ImageTextFiles(config=config, data_dir=data_dir, file_format="array_record")
  older = [v.name for v in epath.Path(builder.data_dir).parent.glob("*")
           if v.name != str(builder.version) and (v / "dataset_info.json").exists()]
  if older:
    logging.warning("%s: prepared before by version %s of this converter, which grouped "
                    "records differently (%s); preparing version %s from the source files",
                    config.name, ", ".join(sorted(older)),
                    ImageTextFiles.RELEASE_NOTES[str(builder.version)], builder.version)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  builder = ImageTextFiles(config=config, data_dir=data_dir, file_format="array_record")
  provenance.record(builder.data_dir, inputs,
                    {k: v.num_examples for k, v in builder.info.splits.items()})
  return builder


def bad_record_report(builder: tfds.core.DatasetBuilder) -> Dict:
  """{split: {"kept": n, "dropped": n, reason: n, ...}} as counted at preparation."""
  return dict(builder.info.metadata.get("bad_records", {})) if builder.info.metadata else {}
