# Reads the ```vector NAME``` blocks of docs/PROTOCOL.md (hex bytes) so the spec's
# examples are the tests' data. Runs on CPython and MicroPython (no os.path there).
import binascii


def repo_root():
    here = __file__.replace("\\", "/")
    parts = here.split("/")
    return "/".join(parts[:-3]) or "."


def load(doc="docs/PROTOCOL.md"):
    vectors = {}
    name = None
    hexes = []
    with open(repo_root() + "/" + doc) as f:
        for line in f:
            line = line.strip()
            if line.startswith("```vector "):
                name = line[10:].strip()
                hexes = []
            elif line.startswith("```") and name is not None:
                vectors[name] = binascii.unhexlify("".join(hexes).replace(" ", ""))
                name = None
            elif name is not None:
                hexes.append(line)
    return vectors
