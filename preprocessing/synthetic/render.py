"""Ray-cast rendering of the synthetic camera (``stereo/centre``) and the push-broom laser (``lms_front``).

One open3d ``RaycastingScene`` per run holds the town (geometry 0), the tree crowns (1) and the run's parked cars
(2); a second scene without the crowns continues rays that pass through gaps of a crown (the gap pattern is a 3-D
noise thresholded at the season's crown density: bare in winter, dense in summer), for the camera and the laser
alike. All coordinates are local (world - origin) and float32 inside open3d.

Camera: primary rays per pixel (at ``render_scale`` of the raw size), procedural albedo per material from the hit
point, object and normal, sky and ambient light, sun light with ray-cast shadows, wet-surface reflections of the
sky, fog by depth, rain streaks and drops, auto exposure with a per-run bias, per-run white balance, tone curve,
vignetting, then upsampling to the raw size, the GBRG Bayer mosaic, shot and read noise and 8-bit quantisation.
"""

from __future__ import annotations

import numpy as np

from preprocessing.robotcar.camera import CameraModel, bayer_mosaic
from preprocessing.robotcar.constants import (
    G_CAMERA_IMAGE,
    LMS_POINTS_PER_SCAN,
    STEREO_CENTRE_INTRINSICS,
    STEREO_CENTRE_SIZE,
)
from preprocessing.synthetic import town as T
from preprocessing.synthetic.route import STREAM_CAMERA, STREAM_LIDAR, run_rng

LMS_ANGLES = np.radians(np.linspace(-135.0, 135.0, LMS_POINTS_PER_SCAN))


def camera_model(width: int, height: int) -> CameraModel:
    """The real ``stereo_narrow_left`` intrinsics scaled by width / 1280 (ideal pinhole, no distortion LUT)."""
    f = width / STEREO_CENTRE_SIZE[0]
    fx, fy, cx, cy = STEREO_CENTRE_INTRINSICS
    return CameraModel(fx * f, fy * f, cx * f, cy * f, np.array(G_CAMERA_IMAGE, float), None, "stereo_narrow_left")


# ----------------------------------------------------------------------------------------------------------------
# procedural noise (deterministic, vectorised)

_M32 = np.uint64(0xFFFFFFFF)
_TEX_N = 256


def _make_noise_texture() -> np.ndarray:
    """A tileable 256x256 value-noise texture in [0, 1] (fixed seed: part of the generator's definition)."""
    rng = np.random.default_rng(0x5EED)
    base = rng.random((_TEX_N, _TEX_N))
    # smooth with a wrapped binomial filter, then restore contrast
    for axis in (0, 1):
        base = (np.roll(base, 1, axis) + 2 * base + np.roll(base, -1, axis)) / 4
    base = (base - base.mean()) / base.std() * 0.2 + 0.5
    return np.clip(base, 0.0, 1.0).astype(np.float32).reshape(-1)


_TEX = _make_noise_texture()


def _hash(*ints, seed: int = 0) -> np.ndarray:
    """Integer lattice hash -> float in [0, 1)."""
    h = np.uint64(seed * 0x9E3779B1 & 0xFFFFFFFF)
    for k, i in zip((0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F), ints):
        h = (h + np.asarray(i, np.int64).astype(np.uint64) * np.uint64(k)) & _M32
        h = h ^ (h >> np.uint64(15))
    h = (h * np.uint64(0x2C1B3C6D)) & _M32
    h = h ^ (h >> np.uint64(12))
    h = (h * np.uint64(0x297A2D39)) & _M32
    h = h ^ (h >> np.uint64(15))
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def noise2(x, y, seed: int = 0) -> np.ndarray:
    """Smooth 2-D value noise in [0, 1] (bilinear lookup in a tileable texture; ``seed`` shifts the lookup)."""
    x = np.asarray(x, np.float32) + np.float32((seed * 37.17) % _TEX_N)
    y = np.asarray(y, np.float32) + np.float32((seed * 91.73) % _TEX_N)
    xf, yf = np.floor(x), np.floor(y)
    fx, fy = x - xf, y - yf
    xi = xf.astype(np.int64) & (_TEX_N - 1)
    yi = (yf.astype(np.int64) & (_TEX_N - 1)) * _TEX_N
    x1 = (xi + 1) & (_TEX_N - 1)
    y1 = (yi + _TEX_N) & (_TEX_N * _TEX_N - 1)
    a, b, c, d = _TEX[yi + xi], _TEX[yi + x1], _TEX[y1 + xi], _TEX[y1 + x1]
    top = a + (b - a) * fx
    return top + (c + (d - c) * fx - top) * fy


def noise3(p: np.ndarray, seed: int = 0) -> np.ndarray:
    """Smooth pseudo 3-D noise in [0, 1] of (N, 3) points (two oblique 2-D lookups)."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    return 0.5 * (noise2(x + 0.61 * z, y - 0.37 * z, seed) + noise2(y + 0.53 * z + 17.0, x - 0.71 * z, seed + 1))


def _aa_line(dist, half_width, foot):
    """Anti-aliased coverage of a line of ``half_width`` at distance ``dist`` for a pixel footprint ``foot``."""
    return np.clip((half_width - dist) / np.maximum(foot, 1e-4) + 0.5, 0.0, 1.0)


def _mix(a, b, w):
    w = np.asarray(w, np.float32)[..., None] if np.ndim(w) else np.float32(w)
    return a + (np.asarray(b, np.float32) - a) * w


# ----------------------------------------------------------------------------------------------------------------

class RunScene:
    """Ray casting for one run: town + crowns + parked cars; crown gaps per the run's vegetation density."""

    def __init__(self, town: T.Town, cars, veg_density: float, nthreads: int = 1):
        import open3d as o3d

        self.o3d = o3d
        self.nthreads = int(nthreads)
        cv, cf, co, cobj = cars
        o = town.objects
        self.objects = T.Objects(*(np.concatenate([getattr(o, k), getattr(cobj, k)]).astype(
            np.int32 if k == "kind" else np.float32)
            for k in ("kind", "col0", "col1", "col2", "params", "origin", "axis_u", "axis_w")))
        self.veg_density = float(veg_density)
        # BVHs built single-threaded: the same structure (hence the same tie-breaking) whatever the worker count
        self.full = o3d.t.geometry.RaycastingScene(nthreads=1)
        self.bare = o3d.t.geometry.RaycastingScene(nthreads=1)
        self.tri_obj_full, self.tri_obj_bare = {}, {}
        self.crowns = None
        if len(town.crown_faces):
            self.crowns = o3d.t.geometry.RaycastingScene(nthreads=1)
            self.crowns.add_triangles(o3d.core.Tensor(np.ascontiguousarray(town.crown_vertices, np.float32)),
                                      o3d.core.Tensor(np.ascontiguousarray(town.crown_faces, np.uint32)))
            crown_ids = np.unique(town.crown_objects)
            self.evergreen_share = float((self.objects.params[crown_ids, 0] > 0.5).mean())
        for verts, faces, tri_obj, in_bare in ((town.static_vertices, town.static_faces, town.static_objects, True),
                                               (town.crown_vertices, town.crown_faces, town.crown_objects, False),
                                               (cv, cf, co, True)):
            if len(faces) == 0:
                continue
            v = o3d.core.Tensor(np.ascontiguousarray(verts, np.float32))
            f = o3d.core.Tensor(np.ascontiguousarray(faces, np.uint32))
            self.tri_obj_full[self.full.add_triangles(v, f)] = tri_obj
            if in_bare:
                self.tri_obj_bare[self.bare.add_triangles(v, f)] = tri_obj

    def _cast(self, scene, table, origins, dirs):
        rays = np.empty((len(dirs), 6), np.float32)
        rays[:, :3] = origins
        rays[:, 3:] = dirs
        r = scene.cast_rays(self.o3d.core.Tensor(rays), nthreads=self.nthreads)
        t = r["t_hit"].numpy().astype(np.float64)
        gid = r["geometry_ids"].numpy()
        pid = r["primitive_ids"].numpy()
        nrm = r["primitive_normals"].numpy()
        obj = np.full(len(dirs), -1, np.int64)
        for g, tri_obj in table.items():
            m = gid == g
            obj[m] = tri_obj[pid[m]]
        t[obj < 0] = np.inf
        return t, obj, nrm

    def crown_gap(self, points: np.ndarray, obj: np.ndarray) -> np.ndarray:
        """True where a ray hitting a crown at ``points`` passes through a gap of the foliage."""
        evergreen = self.objects.params[obj, 0] > 0.5
        density = np.where(evergreen, 0.93, self.veg_density)
        n = 0.65 * noise3(points * 1.1, seed=7) + 0.35 * noise3(points * 2.9, seed=8)
        # value noise is concentrated around 0.5: stretch it so the opaque fraction roughly equals the density
        q = np.clip((n - 0.5) * 2.6 + 0.5, 0.0, 1.0)
        return q > density

    def cast(self, origins, dirs):
        """First opaque hit: (t (N,), object id (N,) or -1, normal (N, 3) facing the ray origin)."""
        origins = np.broadcast_to(np.asarray(origins, np.float64), dirs.shape)
        t, obj, nrm = self._cast(self.full, self.tri_obj_full, origins, dirs)
        hit = obj >= 0
        crown = np.zeros(len(t), bool)
        crown[hit] = self.objects.kind[obj[hit]] == T.CROWN
        if crown.any():
            idx = np.flatnonzero(crown)
            p = origins[idx] + dirs[idx] * t[idx, None]
            gap = self.crown_gap(p, obj[idx])
            idx = idx[gap]
            if len(idx):
                t2, o2, n2 = self._cast(self.bare, self.tri_obj_bare, origins[idx], dirs[idx])
                t[idx], obj[idx], nrm[idx] = t2, o2, n2
        dot = nrm[:, 0] * dirs[:, 0] + nrm[:, 1] * dirs[:, 1] + nrm[:, 2] * dirs[:, 2]
        sign = np.where(dot > 0, np.float32(-1.0), np.float32(1.0))
        return t, obj, nrm * sign[:, None]

    def shadow(self, points, normals, sun_dir) -> np.ndarray:
        """Fraction of sunlight reaching ``points``: opaque occluders block it, crowns by their density."""
        rays = np.empty((len(points), 6), np.float32)
        rays[:, :3] = points + normals * 0.03
        rays[:, 3:] = sun_dir
        rays = self.o3d.core.Tensor(rays)
        lit = 1.0 - self.bare.test_occlusions(rays, nthreads=self.nthreads).numpy().astype(np.float32)
        if self.crowns is not None:
            opacity = 0.95 * max(self.veg_density, 0.3 * self.evergreen_share)
            occ = self.crowns.test_occlusions(rays, nthreads=self.nthreads).numpy()
            lit[occ] *= 1.0 - opacity
        return lit


# ----------------------------------------------------------------------------------------------------------------

class Renderer:
    def __init__(self, scene: RunScene, cond, config, run_index: int):
        self.scene = scene
        self.cond = cond
        self.config = config
        self.run_index = run_index
        self.model = camera_model(config.image_width, config.image_height)
        s = config.render_scale
        self.rw, self.rh = max(8, int(round(config.image_width * s))), max(8, int(round(config.image_height * s)))
        sx, sy = self.rw / config.image_width, self.rh / config.image_height
        fx, fy = self.model.fx * sx, self.model.fy * sy
        cx, cy = (self.model.cx + 0.5) * sx - 0.5, (self.model.cy + 0.5) * sy - 0.5
        u, v = np.meshgrid(np.arange(self.rw, dtype=float), np.arange(self.rh, dtype=float))
        d_img = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1).reshape(-1, 3)
        d_cam = d_img @ self.model.G_camera_image[:3, :3].T
        self.d_cam = d_cam / np.linalg.norm(d_cam, axis=1, keepdims=True)
        self.pixel_angle = 1.0 / fx
        r2 = ((u - cx) ** 2 + (v - cy) ** 2) / (cx ** 2 + cy ** 2)
        self.vignette = (1.0 - cond.vignetting * r2).reshape(-1)
        amb = (cond.sky_zenith + cond.sky_horizon) / 2
        self.ambient_rgb = (cond.ambient * amb / amb.mean()).astype(np.float32)
        self.sun_dir = cond.sun_dir.astype(np.float32)
        self.sun_rgb = (cond.sun_intensity * cond.sun_colour).astype(np.float32)
        up20 = np.array([[0.0, 0.94, -0.34]])
        self.sky_reflection = self.sky(up20, clouds=False)[0].astype(np.float32)
        # pixel -> representative pixel of its 2x2 block (shadow rays are shared inside a block when consistent)
        rep = (v.astype(np.int64) // 2 * 2).clip(0, self.rh - 1) * self.rw + (u.astype(np.int64) // 2 * 2)
        self.block_rep = rep.reshape(-1)
        # a bank of sensor noise, read at a per-frame random offset (cheaper than fresh normals per frame)
        nrng = run_rng(config.seed, run_index, STREAM_CAMERA, 1 << 29)
        self.noise_bank = nrng.standard_normal(config.image_width * config.image_height * 2, dtype=np.float32)

    # -- sky --------------------------------------------------------------------------------------------------
    def sky(self, d: np.ndarray, clouds: bool = True) -> np.ndarray:
        c = self.cond
        up = np.clip(-d[:, 2], 0.0, 1.0)
        base = _mix(c.sky_horizon[None], c.sky_zenith[None], np.sqrt(up))
        cos_g = np.clip(d @ c.sun_dir, -1.0, 1.0)
        if c.cloud_cover < 1.0:
            glow = c.sun_intensity * (0.06 * np.exp((cos_g - 1.0) * 12.0) + 0.8 * (cos_g > 0.9995))
            base = base + glow[:, None] * c.sun_colour[None]
        if c.cloud_cover > 0.0 and not clouds:
            base = base * (0.82 if c.cloud_cover >= 1.0 else 1.0 - 0.1 * c.cloud_cover)
        elif c.cloud_cover > 0.0:
            k = 1.0 / (up + 0.08)
            x, y = d[:, 0] * k * 2.0, d[:, 1] * k * 2.0
            n = 0.6 * noise2(x, y, seed=c.cloud_seed) + 0.4 * noise2(x * 2.7, y * 2.7, seed=c.cloud_seed + 1)
            if c.cloud_cover >= 1.0:
                shade = 0.82 + 0.3 * (n - 0.5)
                base = base * shade[:, None]
            else:
                w = np.clip((n - (1.0 - c.cloud_cover)) * 5.0, 0.0, 1.0)
                cloud = np.array([0.86, 0.86, 0.88]) * (0.8 + 0.35 * n)[:, None] * (0.7 + 0.3 * c.sun_colour[None])
                base = _mix(base, cloud, w)
        return base

    # -- materials --------------------------------------------------------------------------------------------
    def albedo(self, p, n, d, foot, obj):
        """(albedo (M, 3), specular (M,)) for hit points."""
        o = self.scene.objects
        kind = np.take(o.kind, obj, axis=0)
        alb = np.zeros((len(p), 3), np.float32)
        spec = np.zeros(len(p), np.float32)
        c = self.cond
        order = np.argsort(kind, kind="stable")
        counts = np.bincount(kind, minlength=len(T.KIND_NAMES))
        starts = np.concatenate([[0], np.cumsum(counts)])
        for k in np.flatnonzero(counts):
            m = order[starts[k]:starts[k + 1]]
            args = (np.take(p, m, axis=0), np.take(n, m, axis=0), np.take(foot, m), np.take(obj, m))
            if k == T.FACADE:
                alb[m], spec[m] = self._facade(*args)
            elif k == T.ROAD:
                alb[m], spec[m] = self._road(*args)
            elif k == T.SIDEWALK:
                alb[m] = self._sidewalk(*args)
            elif k == T.GRASS:
                alb[m] = self._grass(*args)
            elif k == T.CROWN:
                alb[m] = self._crown(*args)
            elif k == T.SIGN:
                alb[m] = self._sign(*args)
            elif k == T.CAR:
                alb[m], spec[m] = self._car(*args)
            elif k == T.HEDGE:
                pp = p[m]
                tex = 0.7 + 0.6 * noise2(pp[:, 0] * 2.0 + pp[:, 2], pp[:, 1] * 2.0 - pp[:, 2], seed=11)
                tint = np.array([1.1, 0.95, 0.85], np.float32) if c.season == "winter" else np.float32(1.0)
                col = np.take(o.col0, obj[m], axis=0) * tint
                alb[m] = col * tex[:, None]
            elif k == T.TRUNK:
                pp = p[m]
                tex = 0.8 + 0.4 * noise2(pp[:, 0] * 3 + pp[:, 1] * 3, pp[:, 2] * 6, seed=12)
                alb[m] = np.take(o.col0, obj[m], axis=0) * tex[:, None]
            else:  # poles, lamps, plain
                alb[m] = np.take(o.col0, obj[m], axis=0)
                spec[m] = 0.05
        if c.snow:
            upw = np.clip((-n[:, 2] - 0.6) / 0.3, 0.0, 1.0)
            cover = np.isin(kind, (T.GRASS, T.SIDEWALK, T.HEDGE, T.FACADE, T.CROWN, T.CAR, T.TRUNK)) * upw
            road = kind == T.ROAD
            if road.any():
                pr = p[road]
                cover[road] = np.clip(noise2(pr[:, 0] * 0.8, pr[:, 1] * 0.8, seed=21) * 1.6 - 0.5, 0, 1) * 0.8
            snow = 0.82 + 0.1 * noise2(p[:, 0] * 3, p[:, 1] * 3, seed=22)
            alb = _mix(alb, np.repeat(snow[:, None], 3, 1) * np.array([0.97, 0.98, 1.0]), cover)
        return alb, spec

    def _facade(self, p, n, foot, obj):
        o = self.scene.objects
        par = np.take(o.params, obj, axis=0)
        fh, ws, wwf, whf, gh, band, top, shop = par.T
        org = np.take(o.origin, obj, axis=0)
        wall, trim, roof = np.take(o.col0, obj, axis=0), np.take(o.col1, obj, axis=0), np.take(o.col2, obj, axis=0)
        nh = np.hypot(n[:, 0], n[:, 1])
        tx, ty = -n[:, 1] / np.maximum(nh, 1e-6), n[:, 0] / np.maximum(nh, 1e-6)
        u = (p[:, 0] - org[:, 0]) * tx + (p[:, 1] - org[:, 1]) * ty
        h = -p[:, 2]
        bid = obj.astype(np.int64)
        tex = 0.88 + 0.24 * noise2(u * 0.35, h * 0.35, seed=31) + 0.06 * noise2(u * 2.1, h * 2.1, seed=32)
        out = wall * tex[:, None]
        spec = np.zeros(len(p))
        # upper floors: window grid
        upper = (h > gh) & (h < top - 0.7)
        fu = np.mod(u / ws, 1.0) - 0.5
        lvl = (h - gh) / fh
        fl = np.mod(lvl, 1.0) - 0.5
        wx, wy = wwf * ws / 2, whf * fh / 2
        du, dv = np.abs(fu) * ws, np.abs(fl) * fh
        detail = np.clip((wwf * ws / np.maximum(foot, 1e-4) - 1.5) / 2.0, 0.0, 1.0)
        win_cov = _aa_line(du, wx, foot) * _aa_line(dv, wy, foot)
        frame_cov = _aa_line(du, wx + 0.08, foot) * _aa_line(dv, wy + 0.08, foot) - win_cov
        wid = _hash(np.floor(u / ws).astype(np.int64), np.floor(lvl).astype(np.int64), bid, seed=33)
        glass = np.array([0.07, 0.08, 0.10]) * (0.6 + 0.9 * wid)[:, None]
        curtain = wid > 0.8
        glass[curtain] = np.array([0.45, 0.40, 0.32]) * wid[curtain, None]
        frame_col = trim * 0.5 + 0.4
        wf = np.where(upper, win_cov, 0.0)
        ff = np.where(upper, frame_cov, 0.0)
        bandm = (band > 0.5) & (h > gh - 0.25) & (h < top) & (np.mod(h - gh, fh) < 0.3)
        out = np.where(bandm[:, None], trim, out)
        # ground floor: shop windows, doors, fascia in an accent colour
        gf = h <= gh
        gu = np.mod(u / (2 * ws), 1.0) - 0.5
        gdu = np.abs(gu) * 2 * ws
        gwin = gf & (h > 0.6) & (h < gh - 1.0)
        g_cov = np.where(gwin, _aa_line(gdu, 0.36 * 2 * ws, foot), 0.0)
        door = gf & (h < 2.3) & (np.abs(np.abs(gu) - 0.5) * 2 * ws < 0.6)
        out = np.where(door[:, None], trim * 0.6, out)
        shop_i = shop.astype(np.int64)
        fascia = gf & (shop_i >= 0) & (h > gh - 0.9) & (h < gh - 0.15)
        if fascia.any():
            acc = T.ACCENT_PALETTE[np.clip(shop_i, 0, len(T.ACCENT_PALETTE) - 1)]
            stripes = np.mod(np.floor(u * 0.8), 2)[:, None]
            out = np.where(fascia[:, None], acc * (0.85 + 0.15 * stripes), out)
            g_cov = np.where(fascia, 0.0, g_cov)
        wcov = np.clip(wf + g_cov, 0, 1)
        out = _mix(out, frame_col, ff * detail + (1 - detail) * 0.0)
        mean_glass = np.array([0.09, 0.10, 0.12])
        pattern = _mix(out, glass, wcov)
        far = _mix(out, mean_glass[None], np.where(upper, wwf * whf, 0.0) + np.where(gwin, 0.7 * 0.6, 0.0))
        out = _mix(far, pattern, detail)
        spec = 0.25 * np.clip(wcov * detail + (1 - detail) * 0.3 * upper, 0, 1)
        isroof = n[:, 2] < -0.5
        if isroof.any():
            out[isroof] = roof[isroof] * (0.85 + 0.3 * noise2(p[isroof, 0], p[isroof, 1], seed=34))[:, None]
            spec[isroof] = 0.0
        # darker near the ground (ambient occlusion, dirt)
        out *= (0.78 + 0.22 * np.clip(h / 1.5, 0, 1))[:, None]
        return out, spec

    def _road(self, p, n, foot, obj):
        o = self.scene.objects
        par = np.take(o.params, obj, axis=0)
        org, ax = np.take(o.origin, obj, axis=0), np.take(o.axis_u, obj, axis=0)
        dx, dy = p[:, 0] - org[:, 0], p[:, 1] - org[:, 1]
        along = dx * ax[:, 0] + dy * ax[:, 1]
        across = -dx * ax[:, 1] + dy * ax[:, 0]
        ac = np.abs(across)
        tex = 0.85 + 0.3 * noise2(p[:, 0] * 0.4, p[:, 1] * 0.4, seed=41)
        fine = 0.9 + 0.2 * noise2(p[:, 0] * 4.0, p[:, 1] * 4.0, seed=42)
        fdet = np.clip(1.0 - foot / 0.5, 0, 1)
        tex = tex * (fine * fdet + (1 - fdet))
        out = np.take(o.col0, obj, axis=0) * tex[:, None]
        # tar patches
        patch = noise2(p[:, 0] * 0.15 + 3.1, p[:, 1] * 0.15, seed=43) > 0.72
        out[patch] *= 0.75
        mark_from, mark_to, phase, yellow = par[:, 0], par[:, 1], par[:, 2], par[:, 3]
        inside = (along > mark_from) & (along < mark_to)
        # footprint on the ground at grazing angles
        gfoot = foot / np.maximum(np.abs(n[:, 2]) * 0 + 0.35, 0.35)
        dash = np.mod(along + phase, 9.0) < 3.6
        centre = _aa_line(ac, 0.07, gfoot) * dash
        bay_line = _aa_line(np.abs(ac - 3.5), 0.06, gfoot)
        bays = (ac > 3.5) & (ac < T.HALF_ROAD) * (np.mod(along + phase * 0.5, 6.0) < 0.12)
        white = np.clip(centre + bay_line + bays * 0.9, 0, 1) * inside
        out = _mix(out, np.array([0.78, 0.78, 0.76])[None], white * 0.9)
        ylw = (yellow > 0.5) & inside
        if ylw.any():
            yl = _aa_line(np.abs(ac - 5.45), 0.05, gfoot) + _aa_line(np.abs(ac - 5.65), 0.05, gfoot)
            out = _mix(out, np.array([0.75, 0.60, 0.12])[None], np.clip(yl, 0, 1) * ylw)
        spec = np.full(len(p), 0.02)
        w = self.cond.wetness
        if w > 0:
            puddle = np.clip((noise2(p[:, 0] * 0.5, p[:, 1] * 0.5, seed=44) - 0.45) * 4, 0, 1)
            out *= (1 - 0.45 * w)
            spec = spec + w * (0.12 + 0.35 * puddle)
        return out, spec

    def _sidewalk(self, p, n, foot, obj):
        o = self.scene.objects
        top = n[:, 2] < -0.7
        org, ax = np.take(o.origin, obj, axis=0), np.take(o.axis_u, obj, axis=0)
        dx, dy = p[:, 0] - org[:, 0], p[:, 1] - org[:, 1]
        along = dx * ax[:, 0] + dy * ax[:, 1]
        across = -dx * ax[:, 1] + dy * ax[:, 0]
        tile = o.params[obj, 0]
        tex = 0.85 + 0.3 * noise2(p[:, 0] * 0.7, p[:, 1] * 0.7, seed=51)
        gfoot = foot / 0.35
        la = np.abs(np.mod(along / tile + 0.5, 1.0) - 0.5) * tile
        lc = np.abs(np.mod(across / tile + 0.5, 1.0) - 0.5) * tile
        grid = np.clip(_aa_line(la, 0.015, gfoot) + _aa_line(lc, 0.015, gfoot), 0, 1)
        out = np.take(o.col0, obj, axis=0) * tex[:, None] * (1 - 0.3 * grid)[:, None]
        out[~top] = np.take(o.col1, obj[~top], axis=0) * tex[~top, None]
        if self.cond.wetness > 0:
            out *= 1 - 0.35 * self.cond.wetness
        return out

    def _grass(self, p, n, foot, obj):
        c = self.cond
        a = noise2(p[:, 0] * 0.25, p[:, 1] * 0.25, seed=61)
        b = noise2(p[:, 0] * 1.7, p[:, 1] * 1.7, seed=62)
        out = c.grass_colour[None] * (0.7 + 0.45 * a + 0.2 * b)[:, None]
        dirt = np.clip((noise2(p[:, 0] * 0.08, p[:, 1] * 0.08, seed=63) - 0.62) * 5, 0, 1)
        out = _mix(out, np.array([0.30, 0.25, 0.18])[None], dirt)
        if c.wetness > 0:
            out *= 1 - 0.25 * c.wetness
        return out

    def _crown(self, p, n, foot, obj):
        o = self.scene.objects
        c = self.cond
        ever = o.params[obj, 0] > 0.5
        leaf_n = noise3(p * 1.8, seed=71)
        tree_r = _hash(obj.astype(np.int64), seed=72)
        autumn_w = np.clip(c.veg_autumn * (0.55 + 0.9 * tree_r) * (0.7 + 0.6 * leaf_n), 0, 1)
        col = _mix(np.take(o.col0, obj, axis=0), np.take(o.col1, obj, axis=0), autumn_w)
        if c.season == "spring":
            col = col * np.array([1.35, 1.35, 1.0])
        bare = np.where(ever, 0.0, c.veg_bare * (0.6 + 0.4 * tree_r))
        col = _mix(col, np.take(o.col2, obj, axis=0) * 1.1, bare)
        out = col * (0.55 + 0.8 * leaf_n)[:, None]
        return out

    def _sign(self, p, n, foot, obj):
        o = self.scene.objects
        par = np.take(o.params, obj, axis=0)
        pattern, nst, w, h = par[:, 0].astype(int), par[:, 1], par[:, 2], par[:, 3]
        org, u, face_n = np.take(o.origin, obj, axis=0), np.take(o.axis_u, obj, axis=0), np.take(o.axis_w, obj, axis=0)
        a = np.clip(((p - org) * u).sum(1) / w, 0, 1)
        b = np.clip((org[:, 2] - p[:, 2]) / h, 0, 1)
        m = np.zeros(len(p))
        for k in range(7):
            s = pattern == k
            if not s.any():
                continue
            aa, bb, nn = a[s], b[s], nst[s]
            if k == 0:
                v = np.mod(np.floor(bb * nn), 2)
            elif k == 1:
                v = np.mod(np.floor(aa * nn), 2)
            elif k == 2:
                v = np.mod(np.floor(aa * nn) + np.floor(bb * nn), 2)
            elif k == 3:
                v = ((aa - 0.5) ** 2 + (bb - 0.5) ** 2 < 0.11).astype(float)
            elif k == 4:
                v = np.mod(np.floor((aa + bb) * nn), 2)
            elif k == 5:
                v = ((np.minimum(np.minimum(aa, 1 - aa), np.minimum(bb, 1 - bb)) < 0.14)
                     | (np.abs(bb - 0.5) < 0.1)).astype(float)
            else:
                v = (bb > aa).astype(float)
            m[s] = v
        detail = np.clip((w / np.maximum(nst, 2) / np.maximum(foot, 1e-4) - 1.0) / 2.0, 0, 1)
        m = m * detail + 0.5 * (1 - detail)
        out = _mix(np.take(o.col1, obj, axis=0), np.take(o.col0, obj, axis=0), m) * 1.15
        back = (n * face_n).sum(1) < 0.3
        out[back] = np.take(o.col2, obj[back], axis=0)
        return out

    def _car(self, p, n, foot, obj):
        o = self.scene.objects
        par = np.take(o.params, obj, axis=0)
        length, width, body_top = par[:, 0], par[:, 1], par[:, 2]
        org, ax = np.take(o.origin, obj, axis=0), np.take(o.axis_u, obj, axis=0)
        dx, dy = p[:, 0] - org[:, 0], p[:, 1] - org[:, 1]
        along = dx * ax[:, 0] + dy * ax[:, 1]
        across = -dx * ax[:, 1] + dy * ax[:, 0]
        h = -p[:, 2]
        out = np.take(o.col0, obj, axis=0).copy()
        spec = np.full(len(p), 0.12)
        glass = (h > body_top + 0.06) & (n[:, 2] > -0.7)
        out[glass] = np.array([0.05, 0.06, 0.07])
        spec[glass] = 0.3
        tyre = h < 0.3
        out[tyre] = 0.04
        spec[tyre] = 0.0
        lamp = (np.abs(along) > length / 2 - 0.03) & (h > 0.55) & (h < 0.8) & (np.abs(across) > width / 2 - 0.45)
        front = along > 0
        out[lamp & front] = np.array([0.9, 0.9, 0.85])
        out[lamp & ~front] = np.array([0.7, 0.05, 0.04])
        return out, spec

    def _shadows(self, hit, need, p, nh, oh, th) -> np.ndarray:
        """Sun visibility of the hit pixels in ``need``: one shadow ray per 2x2 block where the block's pixels see
        the same object at a similar depth, one per pixel elsewhere."""
        n_pix = self.rw * self.rh
        pos = np.full(n_pix, -1, np.int64)  # pixel -> index into the hit arrays
        pos[hit] = np.arange(len(hit))
        need_idx = np.flatnonzero(need)
        rep = pos[self.block_rep[hit[need_idx]]]
        ok = rep >= 0
        ok[ok] = need[rep[ok]] & (oh[rep[ok]] == oh[need_idx[ok]]) & (
            np.abs(th[rep[ok]] - th[need_idx[ok]]) < 0.03 * th[need_idx[ok]] + 0.05)
        own = ~ok | (rep == need_idx)
        lit_all = np.zeros(len(hit), np.float32)
        mark = np.zeros(len(hit), bool)
        mark[need_idx[own]] = True
        mark[rep[ok]] = True
        cast_idx = np.flatnonzero(mark)
        lit_all[cast_idx] = self.scene.shadow(p[cast_idx], nh[cast_idx], self.sun_dir)
        out = lit_all[need_idx]
        out[ok] = lit_all[rep[ok]]
        return out

    # -- frame ------------------------------------------------------------------------------------------------
    def render_linear(self, T_local_cam: np.ndarray) -> np.ndarray:
        """(rh, rw, 3) linear radiance of the view from ``T_local_cam`` (camera frame x fwd, y right, z down)."""
        c = self.cond
        R, t0 = T_local_cam[:3, :3], T_local_cam[:3, 3]
        d = (self.d_cam @ R.T).astype(np.float32)
        t, obj, nrm = self.scene.cast(t0, d)
        hit = np.flatnonzero(obj >= 0)
        miss = np.flatnonzero(obj < 0)
        img = np.empty((len(d), 3), np.float32)
        if len(miss):
            img[miss] = self.sky(d[miss])
        if len(hit):
            dh, th = np.take(d, hit, axis=0), np.take(t, hit).astype(np.float32)
            nh, oh = np.take(nrm, hit, axis=0).astype(np.float32), np.take(obj, hit)
            p = (t0 + dh * th[:, None]).astype(np.float32)
            foot = th * np.float32(self.pixel_angle)
            alb, spec = self.albedo(p, nh, dh, foot, oh)
            up = np.clip(-nh[:, 2], 0.0, 1.0)
            sky_vis = 0.55 + 0.45 * up
            light = self.ambient_rgb[None] * sky_vis[:, None]
            if c.sun_intensity > 0:
                ndl = np.clip(nh @ self.sun_dir, 0.0, None)
                lit = np.zeros(len(hit), np.float32)
                need = ndl > 0
                if self.config.shadows and need.any():
                    lit[need] = self._shadows(hit, need, p, nh, oh, th)
                elif need.any():
                    lit[need] = 1.0
                light = light + (ndl * lit)[:, None] * self.sun_rgb[None]
            col = alb * light
            sp = np.flatnonzero(spec > 0.01)
            if len(sp):  # glossy surfaces reflect the (uniform, at ~20 deg elevation) sky
                dn = (dh[sp] * nh[sp]).sum(1)
                fres = spec[sp] * (0.4 + 0.6 * (1 - np.abs(dn)) ** 3)
                col[sp] += fres[:, None] * self.sky_reflection[None]
            img[hit] = col
        if np.isfinite(c.fog_visibility_m):
            dist = np.where(np.isfinite(t), t, 5 * c.fog_visibility_m)
            e = np.exp(-3.0 * dist / c.fog_visibility_m)
            img = img * e[:, None] + c.fog_colour[None] * (1 - e[:, None])
        return img.reshape(self.rh, self.rw, 3)

    def render_raw(self, T_local_cam: np.ndarray, frame_index: int) -> np.ndarray:
        """Raw GBRG Bayer frame (image_height, image_width) uint8."""
        import cv2

        c = self.cond
        cfg = self.config
        rng = run_rng(cfg.seed, self.run_index, STREAM_CAMERA, frame_index)
        img = self.render_linear(T_local_cam)
        if c.rain_streaks:
            img = self._rain(img, rng)
        # auto exposure (partial), per-run bias, white balance, tone curve, gamma, vignetting
        lum = img @ np.array([0.3, 0.6, 0.1])
        gain = c.exposure_bias * (0.42 / max(float(lum.mean()), 1e-3)) ** 0.85
        x = img * (gain * c.white_balance)[None, None]
        x = x * (1.0 + x / 4.0) / (1.0 + x)
        x = np.clip(x, 0.0, 1.0) ** (1.0 / c.gamma)
        x = x * self.vignette.reshape(self.rh, self.rw, 1)
        x = (x * 255.0).astype(np.float32)
        if (self.rw, self.rh) != (cfg.image_width, cfg.image_height):
            x = cv2.resize(x, (cfg.image_width, cfg.image_height), interpolation=cv2.INTER_LINEAR)
        raw = bayer_mosaic(x, "GBRG")
        if cfg.image_noise > 0:
            sigma = np.sqrt(cfg.image_noise ** 2 * (1.0 + raw / 64.0))
            off = int(rng.integers(0, self.noise_bank.size - raw.size))
            raw = raw + sigma * self.noise_bank[off:off + raw.size].reshape(raw.shape)
        return np.clip(np.rint(raw), 0, 255).astype(np.uint8)

    def _rain(self, img, rng):
        import cv2

        h, w = img.shape[:2]
        layer = np.zeros((h, w), np.float32)
        slant = rng.normal(0.15, 0.05)
        for _ in range(self.cond.rain_streaks):
            x0, y0 = rng.uniform(0, w), rng.uniform(-0.2 * h, h)
            ln = rng.uniform(0.05, 0.18) * h
            cv2.line(layer, (int(x0), int(y0)), (int(x0 + slant * ln), int(y0 + ln)), float(rng.uniform(0.3, 1.0)), 1)
        layer = cv2.GaussianBlur(layer, (3, 3), 0)
        out = img * (1 - 0.25 * layer[..., None]) + 0.35 * layer[..., None] * np.array([0.8, 0.82, 0.85])
        # drops on the windscreen: blurred discs
        blur = cv2.GaussianBlur(out.astype(np.float32), (0, 0), max(w / 80.0, 1.0))
        mask = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(4, 14))):
            cv2.circle(mask, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(0.01, 0.04) * w) + 1,
                       1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(w / 200.0, 0.8))[..., None]
        return out * (1 - mask) + (blur * 1.08) * mask

    # -- laser ------------------------------------------------------------------------------------------------
def lidar_scans(scene: RunScene, cond, config, run_index: int, T_local_laser: np.ndarray, first_scan: int):
    """Simulate ``len(T_local_laser)`` push-broom scans: (xy (B, 541, 2), reflectance (B, 541)).

    Rays at -135..135 deg (0.5 deg) in the laser's x-y plane; no echo within ``lidar_max_range_m`` -> x = y = 0,
    reflectance 0. Noise streams are keyed by the scan index so that batching does not change the output.
    """
    B = len(T_local_laser)
    d_l = np.column_stack([np.cos(LMS_ANGLES), np.sin(LMS_ANGLES), np.zeros(LMS_POINTS_PER_SCAN)])
    R = T_local_laser[:, :3, :3]
    dirs = (R[:, None, :, 0] * d_l[None, :, 0, None] + R[:, None, :, 1] * d_l[None, :, 1, None]).reshape(-1, 3)
    origins = np.repeat(T_local_laser[:, :3, 3], LMS_POINTS_PER_SCAN, axis=0)
    t, obj, nrm = scene.cast(origins, np.ascontiguousarray(dirs))
    valid = (obj >= 0) & (t <= config.lidar_max_range_m)
    kind = np.where(obj >= 0, scene.objects.kind[np.maximum(obj, 0)], 0)
    cos_inc = np.abs((nrm * dirs).sum(1))
    refl = T.KIND_REFLECTIVITY[kind] * (0.25 + 0.75 * cos_inc)
    if cond.wetness > 0:
        refl = np.where(kind == T.ROAD, refl * (1 - 0.5 * cond.wetness), refl)
    rng = run_rng(config.seed, run_index, STREAM_LIDAR, first_scan)
    noise = rng.standard_normal((2, len(t)))
    r = t + config.lidar_range_noise_m * noise[0]
    refl = refl * (1.0 + 0.05 * noise[1])
    if cond.weather == "rain":
        drop = rng.random(len(t)) < 0.01
        valid &= ~drop
    else:
        rng.random(len(t))
    r = np.where(valid, r, 0.0)
    refl = np.where(valid, np.clip(refl, 0.0, 1.0), 0.0)
    xy = np.where(valid[:, None], r[:, None] * d_l[np.tile(np.arange(LMS_POINTS_PER_SCAN), B), :2], 0.0)
    return xy.reshape(B, LMS_POINTS_PER_SCAN, 2), refl.reshape(B, LMS_POINTS_PER_SCAN)
