"""Which forgery family a dataset's label group belongs to — without ever stripping a name into another.

Label groups name *methods* (`FF-FS` is FaceForensics++'s FaceSwap method, `DF_fake` DeeperForensics'
fakes, `simswap_Fake` DF40's SimSwap), so a fake's family is, in this order:
  1. the user's family map (`--family-map FILE.yaml`, `{family: [label group or method, ...]}`);
  2. the video entry's own `family` key (ForgeryLab and `fakemerge faces` write one);
  3. the built-in DF40 table below, for DF40's `<method>_Fake` groups (`simswap_Fake` -> FS);
  4. fakemerge's own `<Dataset>_<family>` convention inside a dataset named <Dataset> (`Tiny_FS` -> FS),
     unless the rest is only a label word (`DFDC_Fake`, `DFDCP_FakeA` stay whole);
  5. otherwise the label group's full name: `FF-FS` and `FF-DF` stay themselves (never `FS`, `DF`).
"""

from __future__ import annotations

import os

from fakemerge.errors import InputError
from fakemerge.io import read_mapping

# DF40's methods by family (YZY-stack/DF40), spelled as DF40's label groups spell them (`<name>_Fake`;
# matched case-insensitively). `ddim` is DF40's label for its DDPM-family set; DF40's test-only
# ("unknown") methods are included under the family DF40 gives them.
DF40_FAMILIES: dict[str, tuple[str, ...]] = {
    "FS": ("fsgan", "faceswap", "simswap", "inswap", "blendface", "uniface", "mobileswap", "e4s", "facedancer",
           "deepfacelab", "FSAll"),
    "FR": ("fomm", "facevid2vid", "wav2lip", "mraa", "one_shot_free", "pirender", "tpsm", "lia", "danet",
           "sadtalker", "mcnet", "hyperreenact", "heygen", "FRAll"),
    "EFS": ("VQGAN", "StyleGAN2", "StyleGAN3", "StyleGANXL", "sd2.1", "ddim", "rddm", "pixart", "DiT", "SiT",
            "MidJourney", "whichisreal", "EFSAll"),
    "FE": ("CollabDiff", "e4e", "stargan", "starganv2", "styleclip"),
}
DF40_FAMILY_OF = {m.lower(): fam for fam, methods in DF40_FAMILIES.items() for m in methods}
DF40_SUFFIXES = ("_Fake", "_fake")
_LABEL_WORDS = ("fake", "real")


class FamilyMap:
    """A user's `{family: [names]}` map; remembers which names it used, so unused ones can be reported."""

    def __init__(self, mapping: dict[str, str] | None = None, source: str = "family map"):
        self.family_of = dict(mapping or {})
        self.source = source
        self.used: set[str] = set()

    @classmethod
    def read(cls, path: str | os.PathLike | None) -> FamilyMap:
        if path is None:
            return cls()
        obj = read_mapping(path, "family map")
        hint = "expected {family: [label group or method, ...]}, e.g. {FS: [FF-DF, FF-FS], FR: [FF-F2F, FF-NT]}"
        mapping: dict[str, str] = {}
        for family, names in obj.items():
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise InputError(f"{path}: family {family!r}: {names!r} is not a list of names ({hint})")
            for name in names:
                if name in mapping and mapping[name] != str(family):
                    raise InputError(f"{path}: {name!r} is listed under both {mapping[name]} and {family}")
                mapping[name] = str(family)
        return cls(mapping, str(path))

    def lookup(self, group: str) -> str | None:
        for name in (group, df40_method(group)):
            if name is not None and name in self.family_of:
                self.used.add(name)
                return self.family_of[name]
        return None

    def unused(self) -> list[str]:
        return sorted(set(self.family_of) - self.used)


def df40_method(group: str) -> str | None:
    """`simswap_Fake` -> `simswap`: DF40's `<method>_Fake` spelling; None for any other group name."""
    for suffix in DF40_SUFFIXES:
        if group.endswith(suffix) and len(group) > len(suffix):
            return group[: -len(suffix)]
    return None


def family_of(group: str, dataset: str, explicit: str | None, family_map: FamilyMap) -> tuple[str, bool]:
    """(family of a fake in label group `group` of `dataset`, whether a rule named it) — see the module doc.
    False means the family is the group's own full name (no map, key or table knew it)."""
    mapped = family_map.lookup(group)
    if mapped is not None:
        return mapped, True
    if explicit:
        return explicit, True
    method = df40_method(group)
    if method is not None and method.lower() in DF40_FAMILY_OF:
        return DF40_FAMILY_OF[method.lower()], True
    for sep in ("_", "-"):
        prefix = f"{dataset}{sep}"
        rest = group[len(prefix):]
        if group.startswith(prefix) and rest and not rest.lower().startswith(_LABEL_WORDS):
            return rest, True
    return group, False
