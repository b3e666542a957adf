"""A procedural town along the route's streets (shared by all runs) and each run's parked cars.

Everything is built as triangle meshes in local coordinates (world - origin; x north, y east, z down, ground at
z = 0) with one object id per triangle. Objects carry a material kind, colours and parameters that the shader
(:mod:`preprocessing.synthetic.render`) turns into facade windows, lane markings, sign patterns and so on.

Street cross-section (lateral distance c from the centreline): driving lanes |c| < 3.5 m, parking strips
3.5-5.8 m, kerb at 5.8 m (0.12 m high), sidewalk 5.8-8.8 m, then lots with buildings (set back 0-4 m) or
vegetation, a sparse second row of taller buildings behind.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from preprocessing.synthetic.route import STREAM_CARS, Route, run_rng

# material kinds (0 = no hit / sky)
SKY, GRASS, ROAD, SIDEWALK, FACADE, TRUNK, CROWN, HEDGE, POLE, LAMP, SIGN, CAR, PLAIN = range(13)
KIND_NAMES = ("sky", "grass", "road", "sidewalk", "facade", "trunk", "crown", "hedge", "pole", "lamp", "sign", "car",
              "plain")
#: LiDAR reflectivity per kind (before the incidence-angle factor).
KIND_REFLECTIVITY = np.array([0.0, 0.35, 0.16, 0.30, 0.45, 0.30, 0.40, 0.40, 0.50, 0.60, 0.90, 0.50, 0.40])

HALF_ROAD = 5.8
SIDEWALK_W = 3.0
KERB_H = 0.12
PARKING_C = 4.65  # lateral position of parked cars' centres
TILE_M = 20.0  # ground, roads and sidewalks are cut into pieces of at most this length
N_PARAMS = 8

# geometry ids inside a run's ray-casting scene
GEOM_STATIC, GEOM_CROWNS, GEOM_CARS = 0, 1, 2

FACADE_PALETTE = np.array([
    [0.62, 0.55, 0.45], [0.70, 0.66, 0.58], [0.55, 0.36, 0.28], [0.48, 0.30, 0.24], [0.75, 0.72, 0.66],
    [0.80, 0.78, 0.70], [0.45, 0.45, 0.47], [0.66, 0.58, 0.40], [0.58, 0.62, 0.64], [0.72, 0.52, 0.40],
    [0.35, 0.38, 0.42], [0.82, 0.80, 0.76], [0.60, 0.42, 0.36], [0.52, 0.56, 0.48], [0.78, 0.70, 0.52],
])
ACCENT_PALETTE = np.array([
    [0.75, 0.10, 0.08], [0.08, 0.25, 0.70], [0.95, 0.80, 0.10], [0.10, 0.55, 0.20], [0.95, 0.95, 0.95],
    [0.05, 0.05, 0.05], [0.90, 0.45, 0.05], [0.55, 0.10, 0.55], [0.05, 0.60, 0.65], [0.85, 0.35, 0.55],
])
CAR_PALETTE = np.array([
    [0.85, 0.85, 0.86], [0.06, 0.06, 0.07], [0.55, 0.56, 0.58], [0.30, 0.31, 0.33], [0.60, 0.06, 0.05],
    [0.08, 0.16, 0.45], [0.12, 0.30, 0.20], [0.80, 0.70, 0.15], [0.40, 0.42, 0.55], [0.75, 0.38, 0.10],
])

#: Car colour frequencies: white, black, silver and grey dominate, as on real streets.
_CAR_CDF = np.cumsum([0.2, 0.18, 0.16, 0.14, 0.08, 0.08, 0.05, 0.02, 0.05, 0.04])


@dataclasses.dataclass
class Objects:
    """Per-object attributes (row i = object id i)."""

    kind: np.ndarray  # (O,) int
    col0: np.ndarray  # (O, 3)
    col1: np.ndarray  # (O, 3)
    col2: np.ndarray  # (O, 3)
    params: np.ndarray  # (O, N_PARAMS)
    origin: np.ndarray  # (O, 3)
    axis_u: np.ndarray  # (O, 3) horizontal axis (street direction, panel width...)
    axis_w: np.ndarray  # (O, 3) facing direction (signs) / unused


class _ObjectTable:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, kind, col0=(0.5, 0.5, 0.5), col1=(0.5, 0.5, 0.5), col2=(0.5, 0.5, 0.5), params=(),
            origin=(0, 0, 0), axis_u=(1, 0, 0), axis_w=(0, 0, 0)) -> int:
        p = np.zeros(N_PARAMS)
        p[:len(params)] = params
        self.rows.append((kind, col0, col1, col2, p, origin, axis_u, axis_w))
        return len(self.rows) - 1

    def freeze(self, offset: int = 0) -> Objects:
        cols = list(zip(*self.rows)) if self.rows else [[]] * 8
        f = lambda i, w: np.asarray(cols[i], float).reshape(-1, w)
        return Objects(np.asarray(cols[0], np.int32).reshape(-1), f(1, 3), f(2, 3), f(3, 3), f(4, N_PARAMS),
                       f(5, 3), f(6, 3), f(7, 3))


class _MeshBuilder:
    def __init__(self) -> None:
        self.v: list[np.ndarray] = []
        self.f: list[np.ndarray] = []
        self.o: list[np.ndarray] = []
        self.n = 0

    def add(self, verts: np.ndarray, faces: np.ndarray, obj: int) -> None:
        self.v.append(np.asarray(verts, float))
        self.f.append(np.asarray(faces, np.int64) + self.n)
        self.o.append(np.full(len(faces), obj, np.int32))
        self.n += len(verts)

    def box(self, cx, cy, yaw, half_len, half_wid, z_top, z_bottom, obj) -> None:
        """Oriented box: centre (cx, cy), yaw of its length axis, from z_top (negative = up) to z_bottom."""
        c, s = np.cos(yaw), np.sin(yaw)
        a = np.array([c, s]) * half_len
        b = np.array([-s, c]) * half_wid
        corners = np.array([[cx, cy]]) + np.array([-a - b, a - b, a + b, -a + b])
        v = np.vstack([np.column_stack([corners, np.full(4, z_bottom)]),
                       np.column_stack([corners, np.full(4, z_top)])])
        self.add(v, _BOX_FACES, obj)

    def gable_roof(self, cx, cy, yaw, half_len, half_wid, z_base, rise, obj) -> None:
        """Triangular prism roof along the length axis (ridge along yaw) on top of a box at z_base."""
        c, s = np.cos(yaw), np.sin(yaw)
        a = np.array([c, s]) * half_len
        b = np.array([-s, c]) * half_wid
        p = np.array([[cx, cy]])
        base = p + np.array([-a - b, a - b, a + b, -a + b])
        ridge = p + np.array([-a, a])
        v = np.vstack([np.column_stack([base, np.full(4, z_base)]),
                       np.column_stack([ridge, np.full(2, z_base - rise)])])
        faces = np.array([[0, 1, 5], [0, 5, 4], [2, 3, 4], [2, 4, 5], [1, 2, 5], [3, 0, 4], [0, 3, 2], [0, 2, 1]])
        self.add(v, faces, obj)

    def prism(self, cx, cy, radius, z_top, z_bottom, obj, sides=6) -> None:
        ang = np.arange(sides) * 2 * np.pi / sides
        ring = np.column_stack([cx + radius * np.cos(ang), cy + radius * np.sin(ang)])
        v = np.vstack([np.column_stack([ring, np.full(sides, z_bottom)]),
                       np.column_stack([ring, np.full(sides, z_top)])])
        faces = []
        for i in range(sides):
            j = (i + 1) % sides
            faces += [[i, j, sides + j], [i, sides + j, sides + i]]
        for i in range(1, sides - 1):
            faces += [[sides, sides + i, sides + i + 1], [0, i + 1, i]]
        self.add(v, np.array(faces), obj)

    def grid(self, xs, ys, z, obj) -> None:
        """A horizontal grid of quads at height z over the cell edges xs x ys."""
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        v = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)])
        ny = len(ys)
        i, j = np.meshgrid(np.arange(len(xs) - 1), np.arange(ny - 1), indexing="ij")
        a = (i * ny + j).ravel()
        f = np.concatenate([np.column_stack([a, a + ny, a + ny + 1]), np.column_stack([a, a + ny + 1, a + 1])])
        self.add(v, f, obj)

    def segment_box(self, p0, p1, half_w, obj) -> None:
        """A thin square beam from 3-D point p0 to p1 (branches)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        d /= np.linalg.norm(d)
        e1 = np.cross(d, [0.0, 0.0, 1.0])
        if np.linalg.norm(e1) < 1e-6:
            e1 = np.array([1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        offs = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        ring = np.array([half_w * (i * e1 + j * e2) for i, j in offs])
        v = np.vstack([p0 + ring, p1 + ring])
        self.add(v, _BOX_FACES, obj)

    def freeze(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.v:
            return np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0, np.int32)
        return np.vstack(self.v), np.vstack(self.f), np.concatenate(self.o)


_BOX_FACES = np.array([
    [0, 2, 1], [0, 3, 2],  # bottom (z_bottom)
    [4, 5, 6], [4, 6, 7],  # top
    [0, 1, 5], [0, 5, 4], [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7],
])


def _icosphere() -> tuple[np.ndarray, np.ndarray]:
    t = (1.0 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], float)
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6],
         [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
         [8, 6, 7], [9, 8, 1]]
    v = list(v / np.linalg.norm(v, axis=1, keepdims=True))
    cache = {}
    faces = []
    for a, b, c in f:  # one subdivision -> 80 faces
        m = []
        for i, j in ((a, b), (b, c), (c, a)):
            key = (min(i, j), max(i, j))
            if key not in cache:
                p = (v[i] + v[j]) / 2
                v.append(p / np.linalg.norm(p))
                cache[key] = len(v) - 1
            m.append(cache[key])
        faces += [[a, m[0], m[2]], [b, m[1], m[0]], [c, m[2], m[1]], [m[0], m[1], m[2]]]
    return np.array(v), np.array(faces)


_ICO_V, _ICO_F = _icosphere()


# ----------------------------------------------------------------------------------------------------------------
# 2-D oriented rectangles (cx, cy, ux, uy, half_len, half_wid) for placement tests

def _rect(cx, cy, yaw, hl, hw):
    return (cx, cy, np.cos(yaw), np.sin(yaw), hl, hw)


def _rect_corners(r):
    cx, cy, ux, uy, hl, hw = r
    a = np.array([ux, uy]) * hl
    b = np.array([-uy, ux]) * hw
    c = np.array([cx, cy])
    return np.array([c - a - b, c + a - b, c + a + b, c - a + b])


def _rects_overlap(r1, r2) -> bool:
    c1, c2 = _rect_corners(r1), _rect_corners(r2)
    for r in (r1, r2):
        for axis in (np.array([r[2], r[3]]), np.array([-r[3], r[2]])):
            p1, p2 = c1 @ axis, c2 @ axis
            if p1.max() <= p2.min() or p2.max() <= p1.min():
                return False
    return True


class _Occupancy:
    """Oriented rectangles already used (corridors, buildings...), with a coarse grid for speed."""

    def __init__(self, cell: float = 40.0) -> None:
        self.cell = cell
        self.grid: dict[tuple[int, int], list] = {}

    def _cells(self, r):
        c = _rect_corners(r)
        lo, hi = np.floor(c.min(0) / self.cell).astype(int), np.floor(c.max(0) / self.cell).astype(int)
        return [(i, j) for i in range(lo[0], hi[0] + 1) for j in range(lo[1], hi[1] + 1)]

    def add(self, r) -> None:
        for k in self._cells(r):
            self.grid.setdefault(k, []).append(r)

    def hits(self, r) -> bool:
        seen = set()
        for k in self._cells(r):
            for other in self.grid.get(k, ()):
                if id(other) in seen:
                    continue
                seen.add(id(other))
                if _rects_overlap(r, other):
                    return True
        return False


@dataclasses.dataclass
class Street:
    start: np.ndarray
    end: np.ndarray
    length: float
    direction: np.ndarray  # unit (north, east)
    right: np.ndarray  # unit, right of the direction
    yaw: float
    along_min: float  # extent of road/sidewalks along the street
    along_max: float
    free_start: bool
    free_end: bool

    def point(self, along, across) -> np.ndarray:
        return self.start + np.multiply.outer(along, self.direction) + np.multiply.outer(across, self.right)


@dataclasses.dataclass
class ParkingSlot:
    x: float
    y: float
    yaw: float


@dataclasses.dataclass
class Town:
    """Static scene: main mesh, crown mesh, objects, streets and parking slots (all local coordinates)."""

    origin: np.ndarray
    static_vertices: np.ndarray
    static_faces: np.ndarray
    static_objects: np.ndarray  # per triangle
    crown_vertices: np.ndarray
    crown_faces: np.ndarray
    crown_objects: np.ndarray
    objects: Objects
    streets: list
    parking: list

    @property
    def n_objects(self) -> int:
        return len(self.objects.kind)


def _streets_from_route(route: Route, extension: float) -> list[Street]:
    segs = route.segments_local
    uniq = []
    for a, b in segs:
        if any((np.allclose(a, p) and np.allclose(b, q)) or (np.allclose(a, q) and np.allclose(b, p)) for p, q in uniq):
            continue
        uniq.append((a, b))
    ends = [p for s in uniq for p in s]

    def shared(p, me):
        return sum(np.linalg.norm(q - p) < 1.0 for q in ends) > 1

    corner = HALF_ROAD + SIDEWALK_W
    streets = []
    for a, b in uniq:
        d = b - a
        length = float(np.linalg.norm(d))
        u = d / length
        fs, fe = not shared(a, None), not shared(b, None)
        streets.append(Street(a, b, length, u, np.array([-u[1], u[0]]), float(np.arctan2(u[1], u[0])),
                              -extension if fs else -corner, length + extension if fe else length + corner, fs, fe))
    return streets


def build_town(route: Route, town_seed: int, extension: float = 70.0) -> Town:
    rng = np.random.default_rng([int(town_seed) & 0xFFFFFFFF, 0x70CC])
    objs = _ObjectTable()
    mesh = _MeshBuilder()
    crowns = _MeshBuilder()
    streets = _streets_from_route(route, extension)
    occ = _Occupancy()
    road_rects = []
    for st in streets:
        mid = (st.along_min + st.along_max) / 2
        c = st.point(mid, 0.0)
        road_rects.append(_rect(c[0], c[1], st.yaw, (st.along_max - st.along_min) / 2, HALF_ROAD + 0.3))
        occ.add(_rect(c[0], c[1], st.yaw, (st.along_max - st.along_min) / 2, HALF_ROAD + SIDEWALK_W + 0.4))

    # ground
    all_pts = np.vstack([np.vstack([s.point(s.along_min, 0.0), s.point(s.along_max, 0.0)]) for s in streets])
    lo, hi = all_pts.min(0) - 450.0, all_pts.max(0) + 450.0
    g = objs.add(GRASS)
    # tiled (large triangles would overlap every BVH node and slow ray casting down)
    xs = np.linspace(lo[0], hi[0], int(np.ceil((hi[0] - lo[0]) / TILE_M)) + 1)
    ys = np.linspace(lo[1], hi[1], int(np.ceil((hi[1] - lo[1]) / TILE_M)) + 1)
    mesh.grid(xs, ys, 0.02, g)

    parking: list[ParkingSlot] = []
    for k, st in enumerate(streets):
        # road surface: a quad, slightly raised per street so overlapping intersections never tie
        z_road = -0.002 * (k % 4)
        mark_from = st.along_min + (0.0 if st.free_start else 2 * HALF_ROAD + SIDEWALK_W)
        mark_to = st.along_max - (0.0 if st.free_end else 2 * HALF_ROAD + SIDEWALK_W)
        o = st.point(0.0, 0.0)
        rid = objs.add(ROAD, col0=np.array([0.16, 0.16, 0.17]) * rng.uniform(0.85, 1.15),
                       params=(mark_from, mark_to, rng.uniform(0, 12), rng.integers(0, 2)),
                       origin=(o[0], o[1], z_road), axis_u=(st.direction[0], st.direction[1], 0.0))
        n_seg = int(np.ceil((st.along_max - st.along_min) / TILE_M))
        for a0, a1 in zip(np.linspace(st.along_min, st.along_max, n_seg + 1)[:-1],
                          np.linspace(st.along_min, st.along_max, n_seg + 1)[1:]):
            quad = np.array([st.point(a0, -HALF_ROAD), st.point(a1, -HALF_ROAD), st.point(a1, HALF_ROAD),
                             st.point(a0, HALF_ROAD)])
            mesh.add(np.column_stack([quad, np.full(4, z_road)]), np.array([[0, 1, 2], [0, 2, 3]]), rid)
        # sidewalks (kerb = their side faces), cut where they would cross another street's road
        paving = np.array([0.52, 0.50, 0.47]) * rng.uniform(0.85, 1.12) * rng.uniform(0.95, 1.05, 3)
        for side in (-1, 1):
            sid = objs.add(SIDEWALK, col0=paving, col1=(0.62, 0.61, 0.58), params=(rng.uniform(0.45, 0.9),),
                           origin=(o[0], o[1], -KERB_H), axis_u=(st.direction[0], st.direction[1], 0.0))
            cells = np.arange(st.along_min, st.along_max, 1.0)
            keep = []
            for a in cells:
                cc = st.point(a + 0.5, side * (HALF_ROAD + SIDEWALK_W / 2))
                r = _rect(cc[0], cc[1], st.yaw, 0.5, SIDEWALK_W / 2)
                keep.append(not any(_rects_overlap(r, rr) for j, rr in enumerate(road_rects) if j != k))
            keep = np.array(keep + [False])
            start = None
            for i, kp in enumerate(keep):
                if kp and start is None:
                    start = i
                if not kp and start is not None:
                    a0, a1 = cells[start], cells[i - 1] + 1.0
                    n_seg = int(np.ceil((a1 - a0) / TILE_M))
                    edges = np.linspace(a0, a1, n_seg + 1)
                    for b0, b1 in zip(edges[:-1], edges[1:]):
                        cc = st.point((b0 + b1) / 2, side * (HALF_ROAD + SIDEWALK_W / 2))
                        mesh.box(cc[0], cc[1], st.yaw, (b1 - b0) / 2, SIDEWALK_W / 2, -KERB_H - 0.001 * (k % 4),
                                 0.01, sid)
                    start = None
        # parking slots (the cars are per run)
        for side in (-1, 1):
            a = mark_from + 12.0 + rng.uniform(0, 3)
            while a < mark_to - 12.0:
                if rng.random() < 0.85:
                    p = st.point(a, side * PARKING_C)
                    parking.append(ParkingSlot(float(p[0]), float(p[1]), st.yaw))
                a += 6.0 if rng.random() < 0.9 else 14.0
        # lamp posts, alternating sides
        pole_col = FACADE_PALETTE[rng.integers(len(FACADE_PALETTE))] * 0.35
        a = st.along_min + rng.uniform(5, 20)
        side = 1
        while a < st.along_max - 5:
            p = st.point(a, side * (HALF_ROAD + 0.45))
            pid = objs.add(POLE, col0=pole_col)
            lid = objs.add(LAMP, col0=(0.85, 0.85, 0.80))
            h = rng.uniform(6.0, 8.0)
            mesh.box(p[0], p[1], st.yaw, 0.08, 0.08, -h, 0.0, pid)
            arm = st.point(a, side * (HALF_ROAD + 0.45 - 1.3))
            mid = (p + arm) / 2
            mesh.box(mid[0], mid[1], st.yaw + np.pi / 2, 0.65, 0.05, -h, -h + 0.1, pid)
            mesh.box(arm[0], arm[1], st.yaw, 0.3, 0.15, -h + 0.05, -h + 0.3, lid)
            a += rng.uniform(24, 36)
            side = -side
        # signs
        a = st.along_min + rng.uniform(10, 40)
        while a < st.along_max - 10:
            _add_sign(rng, objs, mesh, st, a)
            a += rng.uniform(30, 80)

    # buildings and vegetation lots, street by street, side by side
    for k, st in enumerate(streets):
        for side in (-1, 1):
            _fill_frontage(rng, objs, mesh, crowns, occ, st, side)
        # closing rows of buildings across free ends
        for free, a_end, sgn in ((st.free_start, st.along_min, -1), (st.free_end, st.along_max, 1)):
            if not free:
                continue
            for across in np.arange(-60.0, 60.1, 15.0):
                d = rng.uniform(8, 14)
                c = st.point(a_end + sgn * (d / 2 + rng.uniform(1, 4)), across)
                _add_building(rng, objs, mesh, occ, c, st.yaw + np.pi / 2, rng.uniform(6.5, 7.5), d / 2,
                              rng.uniform(8, 20), facing=-sgn * st.direction)
        # street trees in some stretches of the sidewalk
        for side in (-1, 1):
            a = st.along_min + rng.uniform(5, 30)
            while a < st.along_max - 5:
                if rng.random() < 0.45:
                    b = a + rng.uniform(30, 90)
                    while a < min(b, st.along_max - 5):
                        p = st.point(a, side * (HALF_ROAD + 1.4))
                        if not any(_rects_overlap(_rect(p[0], p[1], 0.0, 1.0, 1.0), rr)
                                   for j, rr in enumerate(road_rects) if j != k):
                            _add_tree(rng, objs, mesh, crowns, p, small=True)
                        a += rng.uniform(11, 17)
                a += rng.uniform(20, 60)

    sv, sf, so = mesh.freeze()
    cv, cf, co = crowns.freeze()
    return Town(route.origin.copy(), sv, sf, so, cv, cf, co, objs.freeze(), streets, parking)


def _add_sign(rng, objs, mesh, st: Street, a: float) -> None:
    side = 1 if rng.random() < 0.5 else -1
    kind = rng.choice(3, p=[0.5, 0.3, 0.2])  # 0 traffic sign facing traffic, 1 panel facing the road, 2 billboard
    c0, c1 = rng.choice(len(ACCENT_PALETTE), 2, replace=False)
    pattern = rng.integers(0, 7)
    pole = objs.add(POLE, col0=(0.35, 0.36, 0.38))
    if kind == 2:
        w, h, z0 = rng.uniform(3.0, 5.0), rng.uniform(2.0, 3.0), rng.uniform(1.5, 2.5)
        across = side * (HALF_ROAD + SIDEWALK_W + rng.uniform(0.5, 2.0))
        yaw = st.yaw
        facing = -side * np.append(st.right, 0.0)
        for da in (-w / 3, w / 3):
            p = st.point(a + da, across + side * 0.1)
            mesh.box(p[0], p[1], 0.0, 0.08, 0.08, -z0, 0.0, pole)
    else:
        w, h = (rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)) if kind == 0 else (rng.uniform(1.0, 1.8),
                                                                                   rng.uniform(0.5, 1.0))
        z0 = rng.uniform(2.0, 2.8)
        across = side * (HALF_ROAD + 0.6)
        p = st.point(a, across)
        mesh.box(p[0], p[1], 0.0, 0.04, 0.04, -(z0 + h), 0.0, pole)
        if kind == 0:
            yaw = st.yaw + np.pi / 2
            facing = -np.append(st.direction, 0.0)
        else:
            yaw = st.yaw
            facing = -side * np.append(st.right, 0.0)
    centre = st.point(a, across) + (facing[:2] * 0.06 if kind != 2 else 0.0)
    u = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    if np.cross(facing, u)[2] > 0:  # make (u, up, facing) consistent: pattern not mirrored
        u = -u
    origin = np.array([centre[0], centre[1], -z0]) - u * w / 2
    sid = objs.add(SIGN, col0=ACCENT_PALETTE[c0], col1=ACCENT_PALETTE[c1], col2=(0.55, 0.56, 0.58),
                   params=(pattern, rng.integers(2, 6), w, h, rng.uniform(0, 1)), origin=tuple(origin),
                   axis_u=tuple(u), axis_w=tuple(facing))
    mesh.box(centre[0], centre[1], yaw, w / 2, 0.03, -(z0 + h), -z0, sid)


def _facade_object(rng, objs, origin, height, storeys_h, accent=None) -> int:
    wall = FACADE_PALETTE[rng.integers(len(FACADE_PALETTE))] * rng.uniform(0.85, 1.12, 3)
    trim = wall * rng.uniform(0.55, 0.8) if rng.random() < 0.6 else np.array([0.85, 0.84, 0.80])
    roof = np.array([[0.30, 0.22, 0.20], [0.25, 0.26, 0.28], [0.40, 0.30, 0.25], [0.20, 0.20, 0.22]])[rng.integers(4)]
    shop = accent if accent is not None else -1
    params = (storeys_h, rng.uniform(2.2, 4.2), rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.65),
              rng.uniform(3.0, 4.5), float(rng.random() < 0.55), height, shop)
    return objs.add(FACADE, col0=wall, col1=trim, col2=roof, params=params, origin=tuple(origin))


def _add_building(rng, objs, mesh, occ, centre, yaw, half_w, half_d, height, facing=None, allow_extra=True) -> bool:
    r = _rect(centre[0], centre[1], yaw, half_w, half_d)
    if occ.hits(r):
        return False
    occ.add(r)
    storeys_h = rng.uniform(3.0, 3.8)
    accent = int(rng.integers(len(ACCENT_PALETTE))) if rng.random() < 0.35 else None
    fid = _facade_object(rng, objs, (centre[0], centre[1], 0.0), height, storeys_h, accent)
    mesh.box(centre[0], centre[1], yaw, half_w, half_d, -height, 0.0, fid)
    roll = rng.random()
    if roll < 0.3:  # pitched roof
        along_w = half_w >= half_d
        mesh.gable_roof(centre[0], centre[1], yaw if along_w else yaw + np.pi / 2, max(half_w, half_d),
                        min(half_w, half_d), -height, rng.uniform(1.5, 0.9 * min(half_w, half_d)), fid)
    elif roll < 0.5 and allow_extra:  # a second, taller volume at the back
        back = np.array([-np.sin(yaw), np.cos(yaw)])
        if facing is not None and np.dot(back, facing[:2]) > 0:
            back = -back
        c2 = np.asarray(centre) + back * half_d * 0.4
        mesh.box(c2[0], c2[1], yaw, half_w * rng.uniform(0.4, 0.8), half_d * 0.5, -height - rng.uniform(3, 9),
                 -height + 0.01, fid)
    elif roll < 0.65 and allow_extra:  # L-shape: a wing to one side at the back
        side_dir = np.array([np.cos(yaw), np.sin(yaw)]) * (1 if rng.random() < 0.5 else -1)
        back = np.array([-np.sin(yaw), np.cos(yaw)])
        if facing is not None and np.dot(back, facing[:2]) > 0:
            back = -back
        ww, wd = rng.uniform(3, 6), rng.uniform(5, 10)
        c2 = np.asarray(centre) + side_dir * (half_w + ww) + back * (half_d - wd)
        r2 = _rect(c2[0], c2[1], yaw, ww, wd)
        if not occ.hits(r2):
            occ.add(r2)
            mesh.box(c2[0], c2[1], yaw, ww, wd, -height * rng.uniform(0.5, 0.9), 0.0, fid)
    return True


def _add_tree(rng, objs, mesh, crowns, p, small=False) -> None:
    evergreen = rng.random() < (0.05 if small else 0.18)
    summer = np.array([0.16, 0.30, 0.08]) * rng.uniform(0.75, 1.25, 3)
    autumn = np.array([[0.75, 0.35, 0.06], [0.80, 0.60, 0.10], [0.60, 0.15, 0.06], [0.55, 0.45, 0.12]])[
        rng.integers(4)] * rng.uniform(0.85, 1.1)
    if evergreen:
        summer = np.array([0.08, 0.20, 0.09]) * rng.uniform(0.8, 1.2, 3)
        autumn = summer
    bark = np.array([0.28, 0.22, 0.17]) * rng.uniform(0.7, 1.2)
    tid = objs.add(TRUNK, col0=bark)
    cid = objs.add(CROWN, col0=summer, col1=autumn, col2=bark, params=(float(evergreen), rng.uniform(0, 100)),
                   origin=(p[0], p[1], 0.0))
    trunk_h = rng.uniform(1.8, 2.8) if small else rng.uniform(2.2, 4.0)
    rh = rng.uniform(1.6, 2.6) if small else rng.uniform(2.2, 3.8)
    rv = rh * (rng.uniform(1.6, 2.2) if evergreen else rng.uniform(0.9, 1.3))
    zc = -(trunk_h + rv * 0.85)
    mesh.prism(p[0], p[1], 0.14 if small else 0.2, zc, 0.0, tid)
    for b in range(4):  # branches, visible when the crown is bare
        ang = rng.uniform(0, 2 * np.pi)
        end = np.array([p[0] + np.cos(ang) * rh * 0.75, p[1] + np.sin(ang) * rh * 0.75,
                        zc - rv * rng.uniform(0.1, 0.6)])
        mesh.segment_box((p[0], p[1], -trunk_h + 0.2 - 0.3 * b), end, 0.05, tid)
    jitter = 1.0 + 0.12 * (rng.random(len(_ICO_V)) - 0.5)
    v = _ICO_V * jitter[:, None] * np.array([rh, rh, rv]) + np.array([p[0], p[1], zc])
    crowns.add(v, _ICO_F, cid)


def _add_hedge(rng, objs, mesh, st: Street, a0, a1, across) -> None:
    hid = objs.add(HEDGE, col0=np.array([0.10, 0.24, 0.08]) * rng.uniform(0.8, 1.2, 3))
    c = st.point((a0 + a1) / 2, across)
    mesh.box(c[0], c[1], st.yaw, (a1 - a0) / 2, rng.uniform(0.35, 0.6), -rng.uniform(0.9, 1.7), 0.0, hid)


def _fill_frontage(rng, objs, mesh, crowns, occ, st: Street, side: int) -> None:
    a = st.along_min - 5.0
    front = HALF_ROAD + SIDEWALK_W
    while a < st.along_max + 5.0:
        lot = rng.uniform(8.0, 24.0)
        mid = a + lot / 2
        if rng.random() < 0.2:  # vegetation lot
            if rng.random() < 0.6:
                _add_hedge(rng, objs, mesh, st, a + 0.5, a + lot - 0.5, side * (front + 0.9))
            for _ in range(int(rng.integers(1, 4))):
                p = st.point(a + rng.uniform(1.5, lot - 1.5), side * (front + rng.uniform(3.0, 14.0)))
                r = _rect(p[0], p[1], 0.0, 1.5, 1.5)
                if not occ.hits(r):
                    occ.add(r)
                    _add_tree(rng, objs, mesh, crowns, p)
        else:
            width = lot - rng.uniform(0.0, 1.5)
            depth = rng.uniform(8.0, 18.0)
            setback = rng.uniform(0.0, 4.0) if rng.random() < 0.7 else rng.uniform(4.0, 9.0)
            height = rng.integers(2, 7) * rng.uniform(3.0, 3.8) + rng.uniform(0.3, 1.2)
            c = st.point(mid, side * (front + setback + depth / 2))
            _add_building(rng, objs, mesh, occ, c, st.yaw, width / 2, depth / 2, height,
                          facing=np.append(-side * st.right, 0.0))
        if rng.random() < 0.4:  # a taller building in the second row
            d2 = rng.uniform(10, 20)
            c = st.point(mid + rng.uniform(-5, 5), side * (front + rng.uniform(24, 40) + d2 / 2))
            _add_building(rng, objs, mesh, occ, c, st.yaw, rng.uniform(7, 15), d2 / 2, rng.uniform(12, 32),
                          facing=np.append(-side * st.right, 0.0), allow_extra=False)
        a += lot


def build_cars(town: Town, seed: int, run_index: int, occupancy: float):
    """Parked cars of one run: (vertices, faces, per-triangle object ids, Objects of the cars).

    Object ids of the cars start at ``town.n_objects``.
    """
    rng = run_rng(seed, run_index, STREAM_CARS)
    objs = _ObjectTable()
    mesh = _MeshBuilder()
    base = town.n_objects
    occupied = rng.random(len(town.parking)) < occupancy * rng.uniform(0.8, 1.2)
    for slot, occ in zip(town.parking, occupied):
        if not occ:
            rng.random(8)  # keep the stream aligned whether or not the slot is used
            continue
        r = rng.random(8)
        length, width = 3.9 + 0.9 * r[0], 1.72 + 0.18 * r[1]
        colour = CAR_PALETTE[min(int(np.searchsorted(_CAR_CDF, r[2])), len(CAR_PALETTE) - 1)] * (0.9 + 0.2 * r[3])
        yaw = slot.yaw + (np.pi if r[4] < 0.3 else 0.0) + (r[5] - 0.5) * 0.06
        fwd = np.array([np.cos(slot.yaw), np.sin(slot.yaw)])
        x, y = np.array([slot.x, slot.y]) + fwd * (r[6] - 0.5) * 0.8
        body_top = 0.95 + 0.2 * r[7]
        oid = base + objs.add(CAR, col0=colour, params=(length, width, body_top), origin=(x, y, 0.0),
                              axis_u=(np.cos(yaw), np.sin(yaw), 0.0))
        mesh.box(x, y, yaw, length / 2, width / 2, -body_top, -0.3, oid)
        back = -np.array([np.cos(yaw), np.sin(yaw)]) * length * 0.08
        mesh.box(x + back[0], y + back[1], yaw, length * 0.3, width / 2 - 0.08, -body_top - 0.5, -body_top + 0.01, oid)
        for sa in (-1, 1):
            for sb in (-1, 1):
                w = np.array([x, y]) + sa * fwd * length * 0.32 + sb * np.array([-fwd[1], fwd[0]]) * (width / 2 - 0.2)
                mesh.box(w[0], w[1], yaw, 0.32, 0.12, -0.62, 0.0, oid)
    v, f, o = mesh.freeze()
    return v, f, o, objs.freeze()
