"""Per-run conditions: date and time (hence the run name and the sun), season, weather, camera response.

Run i is a function of (seed, i) alone. Seasons and weather are stratified over the run index so that a handful
of runs already covers summer/autumn/winter/spring and clear/overcast/rain/fog; everything else is drawn from the
run's own random stream.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from preprocessing.synthetic.geo import sun_position, utm_to_latlon
from preprocessing.synthetic.route import STREAM_CONDITIONS, run_rng

SEASON_ORDER = ("summer", "autumn", "winter", "spring")
SEASON_MONTHS = {"summer": (6, 7, 8), "autumn": (9, 10, 11), "winter": (12, 1, 2), "spring": (3, 4, 5)}
WEATHER_ORDER = ("clear", "overcast", "rain", "partly_cloudy", "fog", "clear", "overcast")
MIN_SUN_ELEVATION_DEG = 8.0

#: Crown opacity (fraction of a deciduous crown that blocks a ray) and colour blend (0 = summer green,
#: 1 = autumn colour, 2 = bare/brown) per season.
VEGETATION = {
    "summer": dict(density=0.93, autumn=0.0, bare=0.0, grass=(0.20, 0.34, 0.09)),
    "spring": dict(density=0.62, autumn=0.0, bare=0.15, grass=(0.24, 0.38, 0.10)),
    "autumn": dict(density=0.68, autumn=0.85, bare=0.1, grass=(0.27, 0.30, 0.11)),
    "winter": dict(density=0.10, autumn=0.0, bare=1.0, grass=(0.22, 0.24, 0.13)),
}


@dataclasses.dataclass
class RunConditions:
    run_index: int
    name: str
    start: dt.datetime  # UTC
    start_us: int
    season: str
    weather: str
    snow: bool
    sun_azimuth_deg: float
    sun_elevation_deg: float
    sun_dir: np.ndarray  # unit vector toward the sun, local NED
    sun_intensity: float  # direct sunlight (0 when the sun is hidden)
    sun_colour: np.ndarray
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    ambient: float
    cloud_cover: float  # 0..1 fraction of the sky covered (drawn in the sky shader)
    cloud_seed: int
    fog_visibility_m: float  # distance where contrast drops to exp(-3); inf = none
    fog_colour: np.ndarray
    wetness: float  # 0 dry .. 1 soaked (rain)
    rain_streaks: int  # streaks per frame
    veg_density: float
    veg_autumn: float
    veg_bare: float
    grass_colour: np.ndarray
    exposure_bias: float
    white_balance: np.ndarray  # per-channel gains (R, G, B)
    vignetting: float
    gamma: float

    def summary(self) -> dict:
        return dict(run=self.name, season=self.season, weather=self.weather, snow=self.snow,
                    sun_azimuth_deg=round(self.sun_azimuth_deg, 2), sun_elevation_deg=round(self.sun_elevation_deg, 2),
                    fog_visibility_m=(None if not np.isfinite(self.fog_visibility_m)
                                      else round(self.fog_visibility_m, 1)),
                    veg_density=round(self.veg_density, 3), exposure_bias=round(self.exposure_bias, 3),
                    white_balance=[round(float(v), 3) for v in self.white_balance])


def run_conditions(seed: int, run_index: int, reference_utm) -> RunConditions:
    """Conditions of run ``run_index``; ``reference_utm`` (northing, easting) places the sun computation."""
    rng = run_rng(seed, run_index, STREAM_CONDITIONS)
    season = SEASON_ORDER[(run_index + seed) % len(SEASON_ORDER)]
    weather = WEATHER_ORDER[(run_index + 3 * seed) % len(WEATHER_ORDER)]
    lat, lon = (float(v) for v in utm_to_latlon(*reference_utm))
    month = int(rng.choice(SEASON_MONTHS[season]))
    year = 2014 + int(rng.integers(0, 2)) if month >= 5 else 2015  # RobotCar: May 2014 .. Dec 2015
    day = int(rng.integers(1, 29))
    slot = int(rng.integers(0, 3))  # morning, midday, afternoon
    start = None
    for _ in range(400):
        minutes = rng.uniform(5 * 60, 19.5 * 60) if slot is None else rng.uniform(
            (6.0, 10.5, 13.5)[slot] * 60, (10.5, 13.5, 18.5)[slot] * 60)
        cand = dt.datetime(year, month, day, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=float(minutes))
        cand = cand.replace(microsecond=0)
        az, el = sun_position(cand, lat, lon)
        if el >= MIN_SUN_ELEVATION_DEG:
            start = cand
            break
        slot = None
    if start is None:  # cannot happen at Oxford's latitude, kept for arbitrary routes
        start = dt.datetime(year, month, day, 12, 0, 0, tzinfo=dt.timezone.utc)
        az, el = sun_position(start, lat, lon)
    name = start.strftime("%Y-%m-%d-%H-%M-%S")
    start_us = int(start.timestamp()) * 1_000_000 + int(rng.integers(0, 1_000_000))
    el_r, az_r = np.radians(el), np.radians(az)
    sun_dir = np.array([np.cos(el_r) * np.cos(az_r), np.cos(el_r) * np.sin(az_r), -np.sin(el_r)])
    # sunlight colour: warmer when low
    warm = np.clip(1.0 - (el - 5.0) / 35.0, 0.0, 1.0)
    sun_colour = np.array([1.0, 0.93 - 0.12 * warm, 0.85 - 0.30 * warm])
    snow = season == "winter" and weather in ("clear", "overcast", "partly_cloudy", "fog") and rng.random() < 0.6
    veg = VEGETATION[season]
    fog_vis = np.inf
    wetness, streaks = 0.0, 0
    cloud_cover = 0.0
    if weather == "clear":
        sun_int, ambient = 3.2, 0.55
        zenith, horizon = np.array([0.20, 0.38, 0.80]), np.array([0.62, 0.74, 0.92])
        cloud_cover = rng.uniform(0.0, 0.15)
    elif weather == "partly_cloudy":
        sun_int, ambient = 2.6, 0.65
        zenith, horizon = np.array([0.30, 0.45, 0.78]), np.array([0.70, 0.78, 0.90])
        cloud_cover = rng.uniform(0.35, 0.6)
    elif weather == "overcast":
        sun_int, ambient = 0.25, 1.05
        zenith, horizon = np.array([0.68, 0.70, 0.74]), np.array([0.80, 0.81, 0.83])
        cloud_cover = 1.0
    elif weather == "rain":
        sun_int, ambient = 0.0, 0.75
        zenith, horizon = np.array([0.46, 0.48, 0.52]), np.array([0.60, 0.61, 0.64])
        cloud_cover = 1.0
        wetness = rng.uniform(0.6, 1.0)
        streaks = int(rng.integers(60, 160))
        fog_vis = rng.uniform(250.0, 500.0)
    elif weather == "fog":
        sun_int, ambient = 0.15, 1.0
        zenith, horizon = np.array([0.74, 0.75, 0.77]), np.array([0.78, 0.79, 0.80])
        cloud_cover = 1.0
        fog_vis = rng.uniform(55.0, 110.0)
        wetness = rng.uniform(0.0, 0.3)
    else:  # pragma: no cover
        raise ValueError(weather)
    # low sun: dimmer and warmer light
    dim = np.clip((el - 2.0) / 25.0, 0.25, 1.0)
    sun_int *= dim
    ambient *= 0.65 + 0.35 * dim
    fog_colour = (horizon * 0.8 + 0.2 * np.array([0.8, 0.8, 0.8])) * (0.75 + 0.25 * dim)
    return RunConditions(
        run_index=run_index, name=name, start=start, start_us=start_us, season=season, weather=weather, snow=snow,
        sun_azimuth_deg=az, sun_elevation_deg=el, sun_dir=sun_dir, sun_intensity=float(sun_int),
        sun_colour=sun_colour, sky_zenith=zenith * (0.7 + 0.3 * dim), sky_horizon=horizon * (0.7 + 0.3 * dim),
        ambient=float(ambient), cloud_cover=float(cloud_cover), cloud_seed=int(rng.integers(0, 2**31)),
        fog_visibility_m=float(fog_vis), fog_colour=fog_colour, wetness=float(wetness), rain_streaks=streaks,
        veg_density=float(veg["density"] * rng.uniform(0.9, 1.05)), veg_autumn=float(veg["autumn"]),
        veg_bare=float(veg["bare"]), grass_colour=np.array(veg["grass"]) * rng.uniform(0.9, 1.1, 3),
        exposure_bias=float(np.exp(rng.normal(0.0, 0.25))),
        white_balance=np.array([np.exp(rng.normal(0, 0.07)), 1.0, np.exp(rng.normal(0, 0.07))]),
        vignetting=float(rng.uniform(0.1, 0.3)), gamma=float(rng.uniform(2.0, 2.4)),
    )
