"""Geodesy and sun position for the synthetic runs.

``utm_to_latlon`` / ``latlon_to_utm``: transverse Mercator on the WGS84 ellipsoid with Krüger's series in the third
flattening n, to order n^4 (the formulation on Wikipedia's "Universal Transverse Mercator coordinate system" page,
after Karney 2011). Within a UTM zone the truncation error is below 1 mm in position (the n^5 terms are ~1e-14 rad);
the forward/inverse round trip on the synthetic area agrees to < 1e-6 m (tested).

``sun_position``: the NOAA low-accuracy solar position (declination and equation of time from the fractional year),
good to about 0.5 deg in elevation and azimuth, which is all the renderer needs.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
UTM_K0 = 0.9996
UTM_FALSE_EASTING = 500000.0
UTM_ZONE = 30  # Oxford; the ins.csv zone string is "30U"

_N = WGS84_F / (2.0 - WGS84_F)
_A = WGS84_A / (1.0 + _N) * (1.0 + _N**2 / 4.0 + _N**4 / 64.0)
_ALPHA = (_N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16 + 41 * _N**4 / 180,
          13 * _N**2 / 48 - 3 * _N**3 / 5 + 557 * _N**4 / 1440,
          61 * _N**3 / 240 - 103 * _N**4 / 140,
          49561 * _N**4 / 161280)
_BETA = (_N / 2 - 2 * _N**2 / 3 + 37 * _N**3 / 96 - _N**4 / 360,
         _N**2 / 48 + _N**3 / 15 - 437 * _N**4 / 1440,
         17 * _N**3 / 480 - 37 * _N**4 / 840,
         4397 * _N**4 / 161280)
_DELTA = (2 * _N - 2 * _N**2 / 3 - 2 * _N**3 + 116 * _N**4 / 45,
          7 * _N**2 / 3 - 8 * _N**3 / 5 - 227 * _N**4 / 45,
          56 * _N**3 / 15 - 136 * _N**4 / 35,
          4279 * _N**4 / 630)


def _central_meridian(zone: int) -> float:
    return np.radians(zone * 6.0 - 183.0)


def utm_to_latlon(northing, easting, zone: int = UTM_ZONE) -> tuple[np.ndarray, np.ndarray]:
    """UTM (northern hemisphere) -> (latitude, longitude) in degrees, WGS84."""
    xi = np.asarray(northing, float) / (UTM_K0 * _A)
    eta = (np.asarray(easting, float) - UTM_FALSE_EASTING) / (UTM_K0 * _A)
    xi_p, eta_p = xi.copy(), eta.copy()
    for j, b in enumerate(_BETA, 1):
        xi_p = xi_p - b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p = eta_p - b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))
    lat = chi.copy()
    for j, d in enumerate(_DELTA, 1):
        lat = lat + d * np.sin(2 * j * chi)
    lon = _central_meridian(zone) + np.arctan2(np.sinh(eta_p), np.cos(xi_p))
    return np.degrees(lat), np.degrees(lon)


def latlon_to_utm(lat_deg, lon_deg, zone: int = UTM_ZONE) -> tuple[np.ndarray, np.ndarray]:
    """(latitude, longitude) in degrees -> UTM (northing, easting), northern hemisphere, WGS84."""
    lat = np.radians(np.asarray(lat_deg, float))
    dlon = np.radians(np.asarray(lon_deg, float)) - _central_meridian(zone)
    c = 2.0 * np.sqrt(_N) / (1.0 + _N)
    t = np.sinh(np.arctanh(np.sin(lat)) - c * np.arctanh(c * np.sin(lat)))
    xi_p = np.arctan2(t, np.cos(dlon))
    eta_p = np.arctanh(np.sin(dlon) / np.sqrt(1.0 + t * t))
    xi, eta = xi_p.copy(), eta_p.copy()
    for j, a in enumerate(_ALPHA, 1):
        xi = xi + a * np.sin(2 * j * xi_p) * np.cosh(2 * j * eta_p)
        eta = eta + a * np.cos(2 * j * xi_p) * np.sinh(2 * j * eta_p)
    return UTM_K0 * _A * xi, UTM_FALSE_EASTING + UTM_K0 * _A * eta


def sun_position(when: _dt.datetime, lat_deg: float, lon_deg: float) -> tuple[float, float]:
    """Sun (azimuth from north toward east, elevation) in degrees at UTC time ``when`` (NOAA approximation)."""
    when = when.astimezone(_dt.timezone.utc) if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)
    day_of_year = when.timetuple().tm_yday
    hours = when.hour + when.minute / 60.0 + when.second / 3600.0
    days_in_year = 366 if (when.year % 4 == 0 and (when.year % 100 != 0 or when.year % 400 == 0)) else 365
    g = 2.0 * np.pi / days_in_year * (day_of_year - 1 + (hours - 12.0) / 24.0)
    eqtime = 229.18 * (0.000075 + 0.001868 * np.cos(g) - 0.032077 * np.sin(g) - 0.014615 * np.cos(2 * g)
                       - 0.040849 * np.sin(2 * g))
    decl = (0.006918 - 0.399912 * np.cos(g) + 0.070257 * np.sin(g) - 0.006758 * np.cos(2 * g)
            + 0.000907 * np.sin(2 * g) - 0.002697 * np.cos(3 * g) + 0.00148 * np.sin(3 * g))
    true_solar_min = hours * 60.0 + eqtime + 4.0 * lon_deg
    hour_angle = np.radians(true_solar_min / 4.0 - 180.0)
    lat = np.radians(lat_deg)
    cos_zen = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    zen = np.arccos(np.clip(cos_zen, -1.0, 1.0))
    # azimuth from north, clockwise
    az = np.arctan2(np.sin(hour_angle), np.cos(hour_angle) * np.sin(lat) - np.tan(decl) * np.cos(lat))
    az = (np.degrees(az) + 180.0) % 360.0
    return float(az), float(90.0 - np.degrees(zen))
