"""The packing of a converted archive when the sources carry packings of their own.

CDS/ERA5 downloads store each file as int16 with its own ``scale_factor``/``add_offset``.
Every source is decoded with its own packing (xarray does this when it opens the file) and
re-encoded into the template's; this module decides the template's packing
(``template_packing=``) and refuses, before anything is written, sources whose values the
template cannot store:

* ``"first"``: the first source's packing; a later source whose values do not fit is refused,
  naming the file and its value range.
* ``"scan"``: a range covering every source, from a scan of their values (run on the workers
  of a dask client, else on client threads), packed into the widest integer dtype of the
  sources.
* ``"float"``: the decoded floats, unpacked.
* ``"auto"`` (default): ``"first"`` when every source has the same packing (nothing to scan),
  ``"scan"`` when they are all packed differently, ``"float"`` when some are packed and others
  are floats (no source loses precision it had).

``encoding=`` (xarray semantics: it replaces a variable's encoding) and ``packing=`` win over
``template_packing`` for the variables they name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import xarray as xr

from .._encoding import CF_ENCODING_KEYS, ZARR_ENCODING_KEYS, complete_fill
from ..codecs.cf import (
    check_packed_values,
    needs_range_check,
    packing_encodings,
    storable_range,
    template_encoding,
)
from ..errors import ConvertOptionError, PackingError
from ._sources import SourceSchema, SourceSpec, open_source

if TYPE_CHECKING:
    from .._open import TemplateInfo

__all__ = [
    "TEMPLATE_PACKINGS",
    "SourceProbe",
    "TemplatePacking",
    "check_reused_template",
    "plan_new_template",
    "probe_source",
    "validate_encoding",
]

TemplatePacking = Literal["auto", "first", "scan", "float"]
TEMPLATE_PACKINGS: Final[tuple[str, ...]] = ("auto", "first", "scan", "float")
_PACK_KEYS: Final = ("dtype", "scale_factor", "add_offset", "_FillValue", "missing_value")
_ALLOWED: Final = frozenset({*CF_ENCODING_KEYS, *ZARR_ENCODING_KEYS, "chunks"})
#: Bytes of a source variable decoded at once by the range scan.
_SLAB_BYTES: Final = 64 * 2**20


def validate_encoding(encoding: Any, template_packing: Any) -> dict[str, dict[str, Any]]:
    """Check ``convert``'s ``encoding=`` and ``template_packing=`` (before anything is read).

    Returns ``encoding`` as ``{name: dict}``.

    Raises
    ------
    ConvertOptionError
        ``template_packing`` is not one of :data:`TEMPLATE_PACKINGS`, ``encoding`` is not a
        mapping of mappings, or names keys xarray's Zarr encoding does not take.
    """
    if template_packing not in TEMPLATE_PACKINGS:
        raise ConvertOptionError(
            f"template_packing must be one of {list(TEMPLATE_PACKINGS)}, got {template_packing!r}"
        )
    if encoding is None:
        return {}
    if not isinstance(encoding, Mapping):
        raise ConvertOptionError(
            f"encoding must be a mapping {{variable: {{key: value}}}}, got {encoding!r}"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, enc in encoding.items():
        if not isinstance(enc, Mapping):
            raise ConvertOptionError(f"encoding[{name!r}] must be a mapping, got {enc!r}")
        unknown = set(enc) - _ALLOWED
        if unknown:
            raise ConvertOptionError(
                f"encoding[{name!r}] has unsupported keys {sorted(unknown)}; allowed: "
                f"{sorted(_ALLOWED)}"
            )
        out[str(name)] = dict(enc)
    return out


def encoding_chunks(
    encoding: Mapping[str, Mapping[str, Any]],
    dims: Mapping[str, tuple[str, ...]],
    chunks: Any,
) -> tuple[dict[str, dict[str, Any]], Any]:
    """Move ``encoding[name]["chunks"]`` into the template's ``chunks`` (one per dimension).

    Returns the encoding without ``"chunks"`` and the merged ``chunks``.

    Raises
    ------
    ConvertOptionError
        Chunks of the wrong length, or two variables (or ``chunks=``) disagreeing on a
        dimension.
    """
    merged: dict[str, Any] = dict(chunks) if isinstance(chunks, Mapping) else {}
    said: dict[str, str] = {str(d): "chunks=" for d in merged}
    out = {}
    for name, enc in encoding.items():
        enc = dict(enc)
        given = enc.pop("chunks", None)
        out[name] = enc
        if given is None:
            continue
        vdims = dims.get(name, ())
        sizes = (given,) * len(vdims) if isinstance(given, int) else tuple(given)
        if len(sizes) != len(vdims):
            raise ConvertOptionError(
                f"encoding[{name!r}]['chunks'] = {given!r} must give one size for each of its "
                f"dimensions {list(vdims)}"
            )
        for dim, size in zip(vdims, sizes, strict=True):
            if dim in merged and merged[dim] != size:
                raise ConvertOptionError(
                    f"encoding[{name!r}]['chunks'] asks for {size} along {dim!r}, but "
                    f"{said[dim]} asks for {merged[dim]}; chunks must agree along a dimension"
                )
            merged[dim], said[dim] = size, f"encoding[{name!r}]"
    if not merged:
        return out, chunks
    if chunks is not None and not isinstance(chunks, Mapping):
        raise ConvertOptionError(
            f"chunks={chunks!r} cannot be combined with chunks in encoding=; give chunks as "
            "a mapping {dim: size}"
        )
    return out, merged


def packing_of(var: xr.Variable | xr.DataArray) -> dict[str, Any]:
    """The CF packing entries of a decoded float variable's ``encoding`` (stored dtype first)."""
    enc = var.encoding
    out: dict[str, Any] = {"dtype": np.dtype(enc.get("dtype", var.dtype))}
    out.update({k: enc[k] for k in _PACK_KEYS[1:] if k in enc})
    return out


def is_packed(packing: Mapping[str, Any]) -> bool:
    """True when values are stored as integers or scaled (not as plain floats)."""
    return np.dtype(packing["dtype"]).kind in "iu" or bool(
        {"scale_factor", "add_offset"} & set(packing)
    )


def same_packing(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether values decoded from packing ``a`` are codes of packing ``b`` (fill aside)."""
    if a is None or b is None:
        return False
    return bool(
        np.dtype(a["dtype"]) == np.dtype(b["dtype"])
        and float(a.get("scale_factor", 1.0)) == float(b.get("scale_factor", 1.0))
        and float(a.get("add_offset", 0.0)) == float(b.get("add_offset", 0.0))
    )


@dataclass(frozen=True)
class SourceProbe:
    """The packing and (where asked for) the finite value range of a source's variables."""

    label: str
    packings: Mapping[str, Mapping[str, Any]]
    dtypes: Mapping[str, np.dtype[Any]]  # decoded
    ranges: Mapping[str, tuple[float, float] | None]  # None: no finite value


def probe_source(spec: SourceSpec, names: Sequence[str], scan: Sequence[str] = ()) -> SourceProbe:
    """Open ``spec``; read the packing of each float variable of ``names`` (metadata only)
    and the finite value range of those in ``scan`` (reads their data)."""
    ds = open_source(spec, indexes=False)
    try:
        packings, dtypes, ranges = {}, {}, {}
        for name in names:
            if name not in ds.data_vars or ds[name].dtype.kind != "f":
                continue
            var = ds[name].variable
            packings[name], dtypes[name] = packing_of(var), var.dtype
            if name in scan:
                ranges[name] = value_range(var)
        return SourceProbe(spec.label, packings, dtypes, ranges)
    finally:
        if spec.dataset is None:
            ds.close()


def value_range(var: xr.Variable) -> tuple[float, float] | None:
    """The finite minimum and maximum of ``var``, read in slabs of bounded size."""
    lo, hi = math.inf, -math.inf
    if var.ndim == 0 or var.size == 0:
        slabs = [var]
    else:
        row = max(1, var.size // var.shape[0]) * var.dtype.itemsize
        step = max(1, _SLAB_BYTES // row)
        slabs = [var[i : i + step] for i in range(0, var.shape[0], step)]
    for slab in slabs:
        x = np.asarray(slab.values, dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size:
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return (lo, hi) if lo <= hi else None


def probe_indexed(
    spec: SourceSpec, schema: SourceSchema, names: Sequence[str]
) -> SourceProbe | None:
    """:func:`probe_source` without opening the file: the packing from the source's
    byte-range index (the CF encoding the scan read), the decoded dtype from its schema.
    None when a float variable of ``names`` the source holds is not in the index."""
    packings, dtypes = {}, {}
    for name in names:
        var = schema.data_vars.get(name)
        if var is None or var.dtype.kind != "f":
            continue
        vi = spec.index.variables.get(name) if spec.index is not None else None
        if vi is None:
            return None
        enc = vi.encoding
        packings[name] = {
            "dtype": np.dtype(vi.dtype),
            **{k: enc[k] for k in _PACK_KEYS[1:] if k in enc},
        }
        dtypes[name] = np.dtype(var.dtype)
    return SourceProbe(spec.label, packings, dtypes, {})


def probe_all(
    runner: Any,
    specs: Sequence[SourceSpec],
    names: Sequence[str],
    scan: Sequence[Sequence[str]],
    schemas: Sequence[SourceSchema] | None = None,
) -> list[SourceProbe]:
    """:func:`probe_source` for every source (``scan[i]``: the variables whose values to
    scan in ``specs[i]``), in parallel: on the workers of a dask client (which may see files
    the client does not), else on threads here. With ``schemas``, sources whose values are
    not scanned and whose index holds the variables are not opened (:func:`probe_indexed`)."""
    out: list[SourceProbe | None] = [None] * len(specs)
    if schemas is not None:
        for i, (spec, schema) in enumerate(zip(specs, schemas, strict=True)):
            if not scan[i] and spec.dataset is None:
                out[i] = probe_indexed(spec, schema, names)
    client: Any = getattr(runner, "client", None)
    remote = (
        [i for i, s in enumerate(specs) if s.dataset is None and out[i] is None]
        if client is not None
        else []
    )
    if remote:
        futures = client.map(
            probe_source,
            [specs[i] for i in remote],
            [list(names)] * len(remote),
            [list(scan[i]) for i in remote],
            key="xzw-probe",
            pure=False,
        )
        try:
            for i, probe in zip(remote, client.gather(futures), strict=True):
                out[i] = probe
        except BaseException:
            client.cancel(futures)
            raise
    local = [i for i in range(len(specs)) if out[i] is None]
    if local:
        with ThreadPoolExecutor(min(4, len(local)), thread_name_prefix="xzw-probe") as pool:
            found = pool.map(lambda i: probe_source(specs[i], names, scan[i]), local)
            for i, probe in zip(local, found, strict=True):
                out[i] = probe
    return [p for p in out if p is not None]


def _mode(mode: str, packs: Sequence[Mapping[str, Any]]) -> str:
    """``"auto"`` resolved for one variable whose sources have ``packs``."""
    if mode != "auto":
        return mode
    if all(same_packing(packs[0], p) for p in packs[1:]):
        return "first"
    return "scan" if all(is_packed(p) for p in packs) else "float"


def _scan_encoding(
    packs: Sequence[Mapping[str, Any]], ranges: Sequence[tuple[float, float] | None]
) -> dict[str, Any] | None:
    """Scale and offset that store every scanned value in the widest integer dtype of the
    sources (int16 if none is an integer), with the dtype's extreme code as ``_FillValue``."""
    found = [r for r in ranges if r is not None]
    if not found:
        return None  # no finite value anywhere: the first source's packing stores NaN fine
    lo, hi = min(r[0] for r in found), max(r[1] for r in found)
    ints = [np.dtype(p["dtype"]) for p in packs if np.dtype(p["dtype"]).kind in "iu"]
    dtype = max(ints, key=lambda d: (d.itemsize, d.kind == "i")) if ints else np.dtype("i2")
    info = np.iinfo(dtype)
    if dtype.kind == "i":
        top = int(info.max)
        scale = (hi - lo) / (2 * top) if hi > lo else 1.0
        offset, fill = lo + scale * top, int(info.min)
    else:
        scale = (hi - lo) / (int(info.max) - 1) if hi > lo else 1.0
        offset, fill = lo, int(info.max)
    return {"dtype": dtype, "scale_factor": scale, "add_offset": offset, "_FillValue": fill}


def _effective(
    var: xr.Variable, cf: Mapping[str, Any], packed: Mapping[str, Any]
) -> dict[str, Any]:
    """What a new template pins for ``var`` (as ``to_template`` merges it): stored dtype,
    CF packing, fill value and valid range."""
    enc = complete_fill(var.dtype, {**cf, **packed})
    extra = dict(enc.pop("__attrs__", {}))
    for key in ("valid_min", "valid_max"):
        if key in var.attrs and key not in extra:
            extra[key] = var.attrs[key]
    enc.setdefault("dtype", var.dtype)
    return {**enc, **extra}


def _to_check(
    probes: Sequence[SourceProbe], targets: Mapping[str, Mapping[str, Any]], floats: set[str]
) -> list[list[str]]:
    """Per source, the variables whose values must be scanned against ``targets``: packed
    differently from the template (sources stored as floats too, for variables in ``floats``)."""
    out = []
    for probe in probes:
        names = []
        for name, target in targets.items():
            pack = probe.packings.get(name)
            if (
                pack is None
                or same_packing(pack, target)
                or not needs_range_check(np.dtype("f8"), target)
            ):
                continue
            if is_packed(pack) or name in floats:
                names.append(name)
        out.append(names)
    return out


def plan_new_template(
    runner: Any,
    specs: Sequence[SourceSpec],
    example: xr.Dataset,
    kw: dict[str, Any],
    zarr_format: int,
    schemas: Sequence[SourceSchema] | None = None,
) -> xr.Dataset:
    """Decide the encoding of a new template made from ``example`` (the first source) and
    refuse, before anything is written, sources whose values it cannot store.

    ``kw`` holds ``to_template``'s keywords plus ``"template_packing"`` (popped); its
    ``"encoding"`` and ``"chunks"`` are rewritten. Returns the example to make the template
    from, with the CF encodings decided here in place of the inherited ones.

    Raises
    ------
    ConvertOptionError
        ``encoding=`` names a variable the sources do not have, or bad chunks in it.
    PackingError
        A source whose values do not fit (names the file and the value range).
    """
    mode = kw.pop("template_packing")
    user = dict(kw.get("encoding") or {})
    missing = sorted(set(user) - set(map(str, example.variables)))
    if missing:
        raise ConvertOptionError(
            f"encoding names {missing}, which the sources do not have (variables: "
            f"{sorted(map(str, example.variables))})"
        )
    dims = {str(n): tuple(map(str, v.dims)) for n, v in example.variables.items()}
    user, kw["chunks"] = encoding_chunks(user, dims, kw.get("chunks"))
    kw["encoding"] = user
    example = example.copy(deep=False)
    for name, enc in user.items():  # xarray semantics: encoding= replaces the encoding
        example.variables[name].encoding = {k: v for k, v in enc.items() if k in CF_ENCODING_KEYS}
    packing = kw.get("packing")
    packed: dict[str, dict[str, Any]] = {}
    if packing is not None:
        packed = packing_encodings(example, packing, zarr_format)
    names = [str(n) for n, v in example.data_vars.items() if v.dtype.kind == "f"]
    explicit = (set(user) | set(packed)) & set(names)
    probes = probe_all(runner, specs, names, [()] * len(specs), schemas)
    modes = {}
    for name in names:
        packs = [p.packings[name] for p in probes if name in p.packings]
        modes[name] = "explicit" if name in explicit else _mode(mode, packs)
    scanned = [n for n in names if modes[n] == "scan"]
    targets = {
        n: _effective(example.variables[n], example.variables[n].encoding, packed.get(n, {}))
        for n in names
        if modes[n] in ("first", "explicit")
    }
    floats = {n for n in names if modes[n] == "first"}
    check = _to_check(probes, targets, floats)
    wanted = [sorted({*scanned, *c}) for c in check]
    if any(wanted):
        probes = probe_all(runner, specs, names, wanted, schemas)
    for name in names:
        if modes[name] == "float":
            dtype = np.result_type(*(p.dtypes[name] for p in probes if name in p.dtypes))
            example.variables[name].encoding = {"dtype": np.dtype(dtype)}
        elif modes[name] == "scan":
            packs = [p.packings[name] for p in probes if name in p.packings]
            scanned_enc = _scan_encoding(packs, [p.ranges.get(name) for p in probes])
            if scanned_enc is not None:
                example.variables[name].encoding = scanned_enc
    how = {
        n: "encoding=" if n in user else "packing=" if n in packed else "the first source's"
        for n in targets
    }
    check_sources_fit(targets, probes, check, how)
    return example


def check_reused_template(
    runner: Any,
    specs: Sequence[SourceSpec],
    info: TemplateInfo,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    schemas: Sequence[SourceSchema] | None = None,
) -> None:
    """Refuse, before anything is written, an ``encoding=`` the existing template does not
    have, and sources packed differently from the template whose values it cannot store
    (sources stored as floats are checked as the tasks write them).

    Raises
    ------
    ConvertOptionError
        ``encoding=`` names a variable the template lacks or asks for another encoding.
    PackingError
        Names the first source that does not fit and its value range.
    """
    _check_reused_encoding(info, encoding or {})
    targets = {
        name: template_encoding(a)
        for name, a in info.arrays.items()
        if not a.is_coord and a.dtype.kind == "f"
    }
    if not any(needs_range_check(np.dtype("f8"), t) for t in targets.values()):
        return
    probes = probe_all(runner, specs, list(targets), [()] * len(specs), schemas)
    check = _to_check(probes, targets, set())
    if any(check):
        probes = probe_all(runner, specs, list(targets), check, schemas)
        check_sources_fit(targets, probes, check, dict.fromkeys(targets, "the existing template's"))


def _check_reused_encoding(info: TemplateInfo, encoding: Mapping[str, Mapping[str, Any]]) -> None:
    for name, enc in encoding.items():
        target = info.arrays.get(name)
        if target is None:
            raise ConvertOptionError(
                f"encoding names {name!r}, which the existing template does not have "
                f"(arrays: {sorted(info.arrays)}); pass resume=False to make a new one"
            )
        have = {**target.encoding, "dtype": target.stored_dtype}
        for key in ("dtype", "scale_factor", "add_offset", "_FillValue", "units"):
            if key not in enc:
                continue
            want, got = enc[key], have.get(key)
            same = (
                np.dtype(want) == np.dtype(got)
                if key == "dtype" and got is not None
                else (got is not None and _equal(want, got))
            )
            if not same:
                raise ConvertOptionError(
                    f"encoding[{name!r}][{key!r}] = {want!r}, but the existing template "
                    f"stores {name!r} with {key}={got!r}; leave encoding= out to append to it, "
                    "or pass resume=False to replace it"
                )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    try:
        return bool(np.asarray(a, dtype=np.float64) == np.asarray(b, dtype=np.float64))
    except (TypeError, ValueError):
        return bool(a == b)


def check_sources_fit(
    targets: Mapping[str, Mapping[str, Any]],
    probes: Sequence[SourceProbe],
    check: Sequence[Sequence[str]],
    how: Mapping[str, str],
) -> None:
    """Refuse, naming the file, a source whose scanned values the template cannot store.

    Raises
    ------
    PackingError
        The first source (in time order) whose values do not fit.
    """
    for probe, names in zip(probes, check, strict=True):
        for name in names:
            found = probe.ranges.get(name)
            if found is None:
                continue
            try:
                check_packed_values(np.array(found, dtype=np.float64), targets[name], name=name)
            except PackingError as e:
                enc = targets[name]
                lo, hi = storable_range(enc)
                raise PackingError(
                    f"source {probe.label!r}: {name!r} holds values {found[0]:.6g} .. "
                    f"{found[1]:.6g}, outside the {lo:.6g} .. {hi:.6g} that the template's "
                    f"packing ({how[name]}: {np.dtype(enc['dtype'])}, scale_factor="
                    f"{enc.get('scale_factor', 1.0)}, add_offset={enc.get('add_offset', 0.0)}) "
                    "stores. Nothing was written. Pass template_packing='scan' (a range "
                    "covering every source) or 'float', or give the packing with encoding="
                ) from e
