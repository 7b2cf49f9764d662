"""MicroPython ROMFS images: the read-only filesystem `vfs.VfsRom` mounts (>= 1.25).

A board whose firmware has a ROMFS partition mounts it at /rom at boot and puts
/rom and /rom/lib on sys.path. .mpy files imported from it are used in place:
their bytecode and string/bytes constants stay in flash, only the objects an
import creates (functions, classes, dicts, the qstr table entries) go to RAM.
Starling puts the bundle's protocol/ and firmware/ .mpy modules in one
(`starling build --romfs` writes DIR/romfs.img; `starling flash --romfs` deploys
it with `mpremote romfs deploy`).

Format (MicroPython extmod/vfs_rom.c, the reference; mpremote's romfs.py writes
the same bytes, tests/test_romfs_image.py checks that against mpremote 1.29):

* varuint: big-endian base-128, high bit set on every byte but the last; may be
  padded with leading 0x80 bytes.
* record: varuint kind, varuint payload length, payload.
* the image is one record of kind 0x14A6B1 (encoded d2 cd 31, "RM1"); its payload
  is a sequence of records; its total size must be even (a leading 0x80 pads the
  length varuint when it is not).
* kinds: 1 padding, 2 verbatim data, 3 data pointer, 4 directory (varuint name
  length, name, nested records), 5 file (varuint name length, name, then a data
  record). Unknown kinds are skipped by readers.

Bytecode-only .mpy needs no alignment: the loader reads bytes, and references
bytecode, qstr and str/bytes data where they are (each followed by its NUL).
"""

from __future__ import annotations

from dataclasses import dataclass, field

HEADER = b"\xd2\xcd\x31"
KIND_PADDING = 1
KIND_DATA = 2
KIND_POINTER = 3
KIND_DIR = 4
KIND_FILE = 5
KIND_FILESYSTEM = 0x14A6B1


class RomfsError(ValueError):
    """An image cannot be built (bad name, bad tree) or read (not a ROMFS)."""


def encode_uint(value: int) -> bytes:
    if value < 0:
        raise RomfsError("negative varuint %d" % value)
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.insert(0, 0x80 | (value & 0x7F))
        value >>= 7
    return bytes(out)


def _record(kind: int, payload: bytes) -> bytes:
    return encode_uint(kind) + encode_uint(len(payload)) + payload


def _check_name(name: str, where: str) -> bytes:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise RomfsError("%s: %r is not a valid file or directory name" % (where, name))
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        raise RomfsError("%s: %r is not ASCII (ROMFS names are ASCII, as mpremote writes them)"
                         % (where, name)) from None


@dataclass
class _Dir:
    dirs: dict[str, "_Dir"] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def build_image(files: dict[str, bytes]) -> bytes:
    """A ROMFS image holding `files` ({"firmware/node.mpy": data, ...}; POSIX paths
    relative to the mount point). Entries are sorted by name in every directory,
    files and directories interleaved, as mpremote's `romfs build` orders a tree."""
    root = _Dir()
    for path in sorted(files):
        parts = path.split("/")
        node = root
        for i, part in enumerate(parts):
            _check_name(part, path)
            last = i == len(parts) - 1
            if last:
                if part in node.dirs:
                    raise RomfsError("%s: both a file and a directory" % path)
                node.files[part] = bytes(files[path])
            else:
                if part in node.files:
                    raise RomfsError("%s: %s is a file" % (path, "/".join(parts[:i + 1])))
                node = node.dirs.setdefault(part, _Dir())
    payload = _encode_dir(root)
    size_field = encode_uint(len(payload))
    if (len(HEADER) + len(size_field) + len(payload)) % 2:
        size_field = b"\x80" + size_field        # the image's size must be even
    return HEADER + size_field + payload


def _encode_dir(d: _Dir) -> bytes:
    out = bytearray()
    for name in sorted(set(d.dirs) | set(d.files)):
        raw = name.encode("ascii")
        if name in d.dirs:
            out += _record(KIND_DIR, encode_uint(len(raw)) + raw + _encode_dir(d.dirs[name]))
        else:
            out += _record(KIND_FILE, encode_uint(len(raw)) + raw + _record(KIND_DATA, d.files[name]))
    return bytes(out)


# --- reading (self-check after a build; tests) ---------------------------------------------

def _decode_uint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    while True:
        if pos >= end:
            raise RomfsError("truncated varuint at offset %d" % pos)
        b = data[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos


def _records(data: bytes, pos: int, end: int):
    while pos < end:
        kind, pos = _decode_uint(data, pos, end)
        length, pos = _decode_uint(data, pos, end)
        if kind == 0 or pos + length > end:
            raise RomfsError("corrupt record at offset %d (kind %d, length %d)" % (pos, kind, length))
        yield kind, pos, pos + length
        pos += length


def read_image(data: bytes) -> dict[str, bytes]:
    """{path: bytes} of every file in a ROMFS image; RomfsError if it is not one."""
    if not data.startswith(HEADER):
        raise RomfsError("not a ROMFS image (it starts %r, not d2:cd:31)" % bytes(data[:3]))
    kind, pos = _decode_uint(data, 0, len(data))
    if kind != KIND_FILESYSTEM:
        raise RomfsError("not a ROMFS image (record kind %#x)" % kind)
    length, pos = _decode_uint(data, pos, len(data))
    if pos + length > len(data):
        raise RomfsError("image claims %d bytes of payload, %d are there" % (length, len(data) - pos))
    out: dict[str, bytes] = {}
    _read_dir(data, pos, pos + length, "", out, pos)
    return out


def _read_dir(data: bytes, pos: int, end: int, prefix: str, out: dict[str, bytes], base: int) -> None:
    for kind, start, stop in _records(data, pos, end):
        if kind not in (KIND_DIR, KIND_FILE):
            continue
        n, p = _decode_uint(data, start, stop)
        name = bytes(data[p:p + n]).decode("ascii")
        p += n
        if kind == KIND_DIR:
            _read_dir(data, p, stop, prefix + name + "/", out, base)
            continue
        for k, a, b in _records(data, p, stop):
            if k == KIND_DATA:
                out[prefix + name] = bytes(data[a:b])
                break
            if k == KIND_POINTER:
                size, q = _decode_uint(data, a, b)
                offset, q = _decode_uint(data, q, b)
                out[prefix + name] = bytes(data[base + offset:base + offset + size])   # from the payload
                break
        else:
            raise RomfsError("file %s%s has no data record" % (prefix, name))
