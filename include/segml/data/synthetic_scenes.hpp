// segml/data/synthetic_scenes.hpp: a seeded procedural street-scene generator (RGB image + per-pixel
// class ids) and a writer that lays such scenes out as a segmentation dataset on disk.
//
// A scene is ray-cast from a pinhole camera standing in a lane of a straight street: a perspective
// road with lane markings and crosswalks, curbs and paved sidewalks, building facades with floors,
// windows and shop fronts, an end-of-street wall or an open horizon, a sky gradient with clouds,
// then cars (rear/front face and the visible side), people, lamp poles, trees and bushes are painted
// far to near at sizes set by their depth. Textures are value noise in world coordinates; lighting
// varies (sun side and cast shadows or overcast, fog, brightness, contrast, white balance, sensor
// noise), so a model has to use texture, shape and context: no class has one colour.
//
// Classes (synthetic_id2label(), SceneClass): 0 road, 1 sidewalk (curbs included), 2 building, 3 sky, 4 car,
// 5 person, 6 pole, 7 vegetation (tree trunks, crowns, bushes, grass); 255 = ignore, only written
// when SceneOptions::ignore_boundaries asks for a 1-pixel band on class boundaries.
//
// Guarantees: generate_scene(seed, w, h) is a pure function of its arguments (no global state: the
// same bytes on every run and thread count; another compiler, libm or FMA contraction may change a
// few pixels). Scene i of a split of
// write_synthetic_dataset depends only on (seed, split, i), so growing a split keeps earlier scenes.
// Speed: about 5 ms of one core per 320x240 scene; the writer stores images as JPEG (quality 95)
// and label maps as PNG, scenes in parallel: a few hundred per second.
// Needs stb through segml/io/image.hpp (Image, save_jpeg, save_png).
// Does not: model real camera optics, occlusion between painted objects other than far-to-near
// order, or any class beyond the eight above.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/io/image.hpp"
#include "segml/io/safetensors.hpp"

namespace segml {

// Class ids of the synthetic scenes (255 = ignore).
enum class SceneClass : uint8_t { road, sidewalk, building, sky, car, person, pole, vegetation };

// Index = class id.
inline const std::vector<std::string>& synthetic_id2label() {
  static const std::vector<std::string> names = {"road", "sidewalk", "building", "sky",
                                                 "car",  "person",   "pole",     "vegetation"};
  return names;
}

struct SceneOptions {
  // Marks a 1-pixel band along every class boundary as 255 (ignore), like hand-made labels.
  bool ignore_boundaries = false;
};

struct Scene {
  Image image;  // (height, width, 3) RGB
  Image label;  // (height, width, 1) class ids
};

namespace scene_detail {

constexpr uint8_t kRoad = 0, kSidewalk = 1, kBuilding = 2, kSky = 3, kCar = 4, kPerson = 5, kPole = 6, kVegetation = 7,
                  kIgnore = 255;

// ---- randomness: a SplitMix64 stream for layout, a lattice hash for textures ----------------------

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }  // [0, 1)
  float uniform(float a, float b) { return a + (b - a) * uniform(); }
  int uniform_int(int a, int b) { return a + static_cast<int>((next() >> 33) % static_cast<uint64_t>(b - a + 1)); }
  bool chance(float p) { return uniform() < p; }
  int sign() { return chance(0.5f) ? 1 : -1; }
  uint32_t seed32() { return static_cast<uint32_t>(next() >> 32); }

 private:
  uint64_t state_;
};

// Seed of item `index` of stream `stream` under `seed` (independent streams per item).
inline uint64_t derive_seed(uint64_t seed, uint64_t stream, uint64_t index) {
  Rng r(seed ^ (stream * 0xD1B54A32D192ED03ull));
  r.next();
  Rng r2(r.next() ^ (index * 0x9E3779B97F4A7C15ull));
  return r2.next();
}

// 32 random bits for an integer lattice point.
inline uint32_t hash32(int32_t x, int32_t y, uint32_t seed) {
  uint32_t h = seed ^ (static_cast<uint32_t>(x) * 0x8DA6B343u) ^ (static_cast<uint32_t>(y) * 0xD8163841u);
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  h ^= h >> 16;
  return h;
}
// Hash of an integer lattice point, in [0, 1).
inline float hash01(int32_t x, int32_t y, uint32_t seed) {
  return static_cast<float>(hash32(x, y, seed) >> 8) * 0x1.0p-24f;
}

// Smoothly interpolated lattice noise in [0, 1), one feature per unit of (u, v).
inline float value_noise(float u, float v, uint32_t seed) {
  const float fu = std::floor(u), fv = std::floor(v);
  const auto iu = static_cast<int32_t>(fu), iv = static_cast<int32_t>(fv);
  float tu = u - fu, tv = v - fv;
  tu = tu * tu * (3.f - 2.f * tu);
  tv = tv * tv * (3.f - 2.f * tv);
  const float a = hash01(iu, iv, seed), b = hash01(iu + 1, iv, seed);
  const float c = hash01(iu, iv + 1, seed), d = hash01(iu + 1, iv + 1, seed);
  return (a + (b - a) * tu) + ((c + (d - c) * tu) - (a + (b - a) * tu)) * tv;
}

// Sum of `octaves` value noises at doubling frequency and halving weight, in [0, 1).
inline float fbm(float u, float v, uint32_t seed, int octaves) {
  float sum = 0.f, weight = 0.5f, total = 0.f;
  for (int o = 0; o < octaves; ++o) {
    sum += weight * value_noise(u, v, seed + 101u * static_cast<uint32_t>(o));
    total += weight;
    u *= 2.f;
    v *= 2.f;
    weight *= 0.5f;
  }
  return sum / total;
}

inline float smoothstep(float e0, float e1, float x) {
  const float t = std::clamp((x - e0) / (e1 - e0), 0.f, 1.f);
  return t * t * (3.f - 2.f * t);
}
inline float fract(float x) { return x - std::floor(x); }

// ---- colours (0..255 floats) ---------------------------------------------------------------------

struct Rgb {
  float r = 0, g = 0, b = 0;
};
inline Rgb operator*(Rgb c, float s) { return {c.r * s, c.g * s, c.b * s}; }
inline Rgb operator*(Rgb a, Rgb b) { return {a.r * b.r, a.g * b.g, a.b * b.b}; }
inline Rgb operator+(Rgb a, Rgb b) { return {a.r + b.r, a.g + b.g, a.b + b.b}; }
inline Rgb mix(Rgb a, Rgb b, float t) { return a * (1.f - t) + b * t; }

// h, s, v in [0, 1] -> 0..255.
inline Rgb hsv(float h, float s, float v) {
  h = fract(h) * 6.f;
  const int i = static_cast<int>(h) % 6;
  const float f = h - std::floor(h);
  const float p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  Rgb c;
  switch (i) {
    case 0: c = {v, t, p}; break;
    case 1: c = {q, v, p}; break;
    case 2: c = {p, v, t}; break;
    case 3: c = {p, q, v}; break;
    case 4: c = {t, p, v}; break;
    default: c = {v, p, q}; break;
  }
  return c * 255.f;
}

// A random colour around hue h, saturation s, value v (each +- its spread).
inline Rgb random_hsv(Rng& rng, float h, float dh, float s, float ds, float v, float dv) {
  return hsv(h + rng.uniform(-dh, dh), std::clamp(s + rng.uniform(-ds, ds), 0.f, 1.f),
             std::clamp(v + rng.uniform(-dv, dv), 0.f, 1.f));
}

// ---- camera and street layout ----------------------------------------------------------------------

// Pinhole camera at (0, height, 0) looking down +Z; X to the right, Y up (metres).
struct Camera {
  float f = 0, xv = 0, yh = 0, height = 0;  // focal length (px), principal point (px), eye height
  float screen_x(float X, float Z) const { return xv + f * X / Z; }
  float screen_y(float Y, float Z) const { return yh + f * (height - Y) / Z; }
};

// One building along a wall, spanning [a0, a1] of the wall's running coordinate (Z for the side
// facades, X for the wall closing the street).
struct Block {
  float a0 = 0, a1 = 0, height = 0;
  Rgb wall, glass;
  float floor_h = 3, bay_w = 2.5f, win_w = 0.5f, win_h = 0.5f;
  bool shop = false;
  uint32_t seed = 0;
};

struct Wall {
  std::vector<Block> blocks;  // sorted by a0, disjoint
  float light = 1;            // sun-facing walls are brighter
  const Block* at(float a) const {
    auto it = std::upper_bound(blocks.begin(), blocks.end(), a, [](float v, const Block& b) { return v < b.a0; });
    if (it == blocks.begin()) return nullptr;
    --it;
    return a <= it->a1 ? &*it : nullptr;
  }
};

struct Street {
  Camera cam;
  float road_c = 0, road_half = 0, curb_w = 0, walk_w = 0;  // road centre X, half width; curb, sidewalk widths
  float xl = 0, xr = 0;                                     // facade planes (left X < 0 < right X)
  int lanes = 2;
  float lane_w = 3, dash_len = 3, dash_period = 9, dash_phase = 0;
  bool edge_lines = false, yellow_centre = false;
  float cross_z0 = 0, cross_z1 = 0;  // crosswalk depth range (empty when equal)
  Rgb asphalt, paint, curb, paving, grass;
  float tile = 0.6f;
  uint32_t tex_seed = 0;
  Wall left, right, end;
  float z_end = 1e9f;   // depth of the wall closing the street (1e9: open to the horizon)
  float z_far = 600.f;  // ground beyond this is not drawn (fades into the horizon)
  Rgb sky_top, sky_horizon, cloud;
  float cloud_cover = 0;
  uint32_t cloud_seed = 0;
  float fog_dist = 300;
  int sun_side = 0;  // -1 sun on the left, +1 on the right, 0 overcast
  float shadow_k = 0, shadow_mul = 1;
};

// Buildings along a wall from a_start to a_stop, with occasional gaps.
inline Wall make_wall(Rng& rng, float a_start, float a_stop, float gap_p, float light) {
  Wall w;
  w.light = light;
  float a = a_start;
  while (a < a_stop) {
    if (rng.chance(gap_p)) {
      a += rng.uniform(4.f, 14.f);
      continue;
    }
    Block b;
    b.a0 = a;
    b.a1 = a + rng.uniform(7.f, 30.f);
    b.height = rng.chance(0.2f) ? rng.uniform(20.f, 45.f) : rng.uniform(5.f, 20.f);
    switch (rng.uniform_int(0, 4)) {
      case 0: b.wall = random_hsv(rng, 0.03f, 0.02f, 0.5f, 0.15f, 0.55f, 0.15f); break;  // brick
      case 1: b.wall = random_hsv(rng, 0.10f, 0.03f, 0.25f, 0.1f, 0.75f, 0.12f); break;  // sandstone
      case 2: b.wall = random_hsv(rng, 0.6f, 0.5f, 0.05f, 0.05f, 0.6f, 0.25f); break;    // concrete
      case 3: b.wall = random_hsv(rng, 0.f, 0.5f, 0.02f, 0.02f, 0.88f, 0.08f); break;    // white
      default: b.wall = random_hsv(rng, rng.uniform(), 0.f, 0.3f, 0.1f, 0.7f, 0.15f); break;
    }
    b.glass = rng.chance(0.6f) ? random_hsv(rng, 0.58f, 0.06f, 0.3f, 0.15f, 0.25f, 0.1f)
                               : random_hsv(rng, 0.55f, 0.1f, 0.15f, 0.1f, 0.55f, 0.15f);
    b.floor_h = rng.uniform(2.8f, 3.8f);
    b.bay_w = rng.uniform(1.8f, 3.5f);
    b.win_w = rng.uniform(0.3f, 0.7f);
    b.win_h = rng.uniform(0.35f, 0.6f);
    b.shop = rng.chance(0.5f);
    b.seed = rng.seed32();
    w.blocks.push_back(b);
    a = b.a1 + (rng.chance(0.3f) ? rng.uniform(0.2f, 1.5f) : 0.f);
  }
  return w;
}

inline Street make_street(Rng& rng, int width, int height) {
  Street s;
  s.cam.f = static_cast<float>(width) * rng.uniform(0.75f, 1.1f);
  s.cam.xv = static_cast<float>(width) * rng.uniform(0.4f, 0.6f);
  s.cam.yh = static_cast<float>(height) * rng.uniform(0.36f, 0.5f);
  s.cam.height = rng.uniform(1.2f, 1.8f);

  s.lanes = rng.uniform_int(2, 4);
  s.lane_w = rng.uniform(2.8f, 3.6f);
  const float lanes_half = 0.5f * static_cast<float>(s.lanes) * s.lane_w;
  s.road_half = lanes_half + (rng.chance(0.5f) ? rng.uniform(1.8f, 2.5f) : rng.uniform(0.f, 0.5f));
  const int cam_lane = rng.uniform_int(0, s.lanes - 1);
  s.road_c = lanes_half - (static_cast<float>(cam_lane) + 0.5f) * s.lane_w + rng.uniform(-0.4f, 0.4f);
  s.curb_w = rng.uniform(0.15f, 0.35f);
  s.walk_w = rng.uniform(2.5f, 6.f);
  s.xl = s.road_c - s.road_half - s.curb_w - s.walk_w;
  s.xr = s.road_c + s.road_half + s.curb_w + s.walk_w;

  s.dash_len = rng.uniform(2.f, 4.f);
  s.dash_period = s.dash_len + rng.uniform(3.f, 8.f);
  s.dash_phase = rng.uniform(0.f, 10.f);
  s.edge_lines = rng.chance(0.5f);
  s.yellow_centre = rng.chance(0.3f);
  if (rng.chance(0.35f)) {
    s.cross_z0 = rng.uniform(8.f, 40.f);
    s.cross_z1 = s.cross_z0 + rng.uniform(2.5f, 4.f);
  }
  s.asphalt = random_hsv(rng, 0.6f, 0.1f, 0.06f, 0.05f, 0.36f, 0.1f);
  s.paint = rng.chance(0.8f) ? Rgb{225, 225, 220} : Rgb{220, 190, 70};
  s.curb = random_hsv(rng, 0.1f, 0.1f, 0.05f, 0.05f, 0.72f, 0.1f);
  s.paving = rng.chance(0.7f) ? random_hsv(rng, 0.1f, 0.1f, 0.08f, 0.06f, 0.55f, 0.12f)
                              : random_hsv(rng, 0.03f, 0.02f, 0.35f, 0.1f, 0.5f, 0.1f);
  s.grass = random_hsv(rng, 0.25f, 0.05f, 0.5f, 0.15f, 0.4f, 0.1f);
  s.tile = rng.uniform(0.3f, 1.0f);
  s.tex_seed = rng.seed32();

  s.sun_side = rng.chance(0.3f) ? 0 : rng.sign();
  s.shadow_k = rng.uniform(0.3f, 1.2f);
  s.shadow_mul = rng.uniform(0.45f, 0.7f);
  // The wall on the sun's side casts shadows and is itself in shade; the other one faces the sun.
  const float lit = s.sun_side == 0 ? 0.9f : 1.0f, shade = s.sun_side == 0 ? 0.9f : rng.uniform(0.6f, 0.75f);
  s.z_end = rng.chance(0.55f) ? rng.uniform(60.f, 250.f) : 1e9f;
  const float wall_stop = std::min(s.z_end, 700.f);
  s.left = make_wall(rng, 0.f, wall_stop, 0.15f, s.sun_side < 0 ? shade : lit);
  s.right = make_wall(rng, 0.f, wall_stop, 0.15f, s.sun_side > 0 ? shade : lit);
  s.end = make_wall(rng, s.xl - 40.f, s.xr + 40.f, 0.f, 0.85f);

  if (s.sun_side == 0) {  // overcast
    const float v = rng.uniform(0.6f, 0.85f);
    s.sky_top = hsv(0.6f, 0.08f, v);
    s.sky_horizon = hsv(0.6f, 0.04f, std::min(1.f, v + 0.1f));
    s.cloud = hsv(0.6f, 0.03f, v - 0.12f);
    s.cloud_cover = rng.uniform(0.4f, 0.8f);
  } else {
    s.sky_top = random_hsv(rng, 0.6f, 0.03f, 0.55f, 0.15f, 0.75f, 0.12f);
    s.sky_horizon = rng.chance(0.15f) ? random_hsv(rng, 0.08f, 0.03f, 0.35f, 0.1f, 0.9f, 0.05f)  // dusk
                                      : random_hsv(rng, 0.58f, 0.03f, 0.2f, 0.08f, 0.92f, 0.05f);
    s.cloud = hsv(0.f, 0.f, rng.uniform(0.85f, 1.f));
    s.cloud_cover = rng.uniform(0.f, 0.5f);
  }
  s.cloud_seed = rng.seed32();
  s.fog_dist = rng.uniform(120.f, 600.f);
  return s;
}

// ---- canvas --------------------------------------------------------------------------------------

struct Canvas {
  int w = 0, h = 0;
  std::vector<Rgb> px;
  std::vector<uint8_t> label;
  Canvas(int width, int height)
      : w(width), h(height), px(static_cast<size_t>(width) * height), label(px.size(), kSky) {}
  void put(int x, int y, Rgb c, uint8_t l) {
    const size_t i = static_cast<size_t>(y) * w + x;
    px[i] = c;
    label[i] = l;
  }
};

// Aerial perspective: colours fade towards the horizon's colour with distance.
inline Rgb fog(const Street& s, Rgb c, float z) { return mix(c, s.sky_horizon, 1.f - std::exp(-z / s.fog_dist)); }

// ---- background: sky, ground, facades ----------------------------------------------------------------

inline Rgb shade_sky(const Street& s, float x, float y, int width, int height) {
  const float t = std::clamp(y / s.cam.yh, 0.f, 1.f);
  Rgb c = mix(s.sky_top, s.sky_horizon, t * (1.6f - 0.6f * t));
  if (s.cloud_cover > 0) {
    const float n = fbm(x / static_cast<float>(width) * 3.f, y / static_cast<float>(height) * 7.f, s.cloud_seed, 3);
    const float alpha = smoothstep(1.f - s.cloud_cover * 0.8f - 0.25f, 1.f - s.cloud_cover * 0.8f, n);
    c = mix(c, s.cloud * (0.85f + 0.2f * n), alpha);
  }
  return c;
}

// Sidewalk, road and grass at ground point (X, Z).
inline Rgb shade_ground(const Street& s, float X, float Z, uint8_t& label) {
  const float d = X - s.road_c, ad = std::abs(d);
  const uint32_t seed = s.tex_seed;
  Rgb c;
  if (ad < s.road_half) {
    label = kRoad;
    c = s.asphalt * (0.88f + 0.24f * value_noise(X * 0.8f, Z * 0.8f, seed));
    c = c * (0.9f + 0.2f * hash01(static_cast<int32_t>(std::floor(X * 25.f)),
                                  static_cast<int32_t>(std::floor(Z * 25.f)), seed + 1));
    if (value_noise(X * 0.15f, Z * 0.15f, seed + 2) > 0.75f) c = c * 0.82f;  // repaired patches
    bool paint = false;
    const float lanes_half = 0.5f * static_cast<float>(s.lanes) * s.lane_w;
    for (int i = 1; i < s.lanes; ++i) {
      const float line = -lanes_half + static_cast<float>(i) * s.lane_w;
      const bool centre = 2 * i == s.lanes;
      if (std::abs(d - line) < 0.075f &&
          ((centre && s.yellow_centre) || fract((Z + s.dash_phase) / s.dash_period) * s.dash_period < s.dash_len))
        paint = true;
    }
    if (s.edge_lines && std::abs(ad - (s.road_half - 0.3f)) < 0.07f) paint = true;
    if (Z > s.cross_z0 && Z < s.cross_z1 && fract(d * 1.1f) < 0.5f && ad < s.road_half - 0.4f) paint = true;
    if (paint) {
      const bool centre_yellow = s.yellow_centre && s.lanes % 2 == 0 && std::abs(d) < 0.1f;
      const Rgb pc = centre_yellow ? Rgb{215, 180, 60} : s.paint;
      c = mix(c, pc, 0.55f + 0.45f * value_noise(X * 4.f, Z * 4.f, seed + 3));  // worn paint
    }
  } else if (ad < s.road_half + s.curb_w) {
    label = kSidewalk;
    c = s.curb * (0.85f + 0.3f * value_noise(X * 6.f, Z * 6.f, seed + 4));
  } else if (ad < s.road_half + s.curb_w + s.walk_w) {
    label = kSidewalk;
    const float tu = (ad - s.road_half - s.curb_w) / s.tile, tv = Z / s.tile;
    const float tile_shade =
        0.9f + 0.2f * hash01(static_cast<int32_t>(std::floor(tu)), static_cast<int32_t>(std::floor(tv)), seed + 5);
    const bool seam = fract(tu) < 0.06f || fract(tv) < 0.06f;
    c = s.paving * tile_shade * (seam ? 0.72f : 1.f) * (0.85f + 0.3f * value_noise(X * 3.f, Z * 3.f, seed + 6));
  } else {
    label = kVegetation;
    c = s.grass * (0.6f + 0.7f * fbm(X * 2.f, Z * 2.f, seed + 7, 2));
  }
  if (s.sun_side != 0) {  // the sun-side buildings' shadows
    const Wall& wall = s.sun_side < 0 ? s.left : s.right;
    const float dist = s.sun_side < 0 ? X - s.xl : s.xr - X;
    const Block* b = wall.at(Z);
    if (b && dist < b->height * s.shadow_k) c = c * s.shadow_mul * Rgb{0.95f, 0.98f, 1.1f};
  }
  return c;
}

// Facade of block `b` at running coordinate a and height Y.
inline Rgb shade_facade(const Block& b, float a, float Y, float light) {
  Rgb c = b.wall * (0.88f + 0.24f * value_noise(a * 1.5f, Y * 1.5f, b.seed));
  if (Y > b.height - 0.5f) return c * 0.72f * light;  // cornice
  const float fl = std::floor(Y / b.floor_h), t = Y / b.floor_h - fl;
  const float bay = std::floor((a - b.a0) / b.bay_w), u = (a - b.a0) / b.bay_w - bay;
  if (t < 0.04f) return c * 0.8f * light;  // floor band
  const float lit = hash01(static_cast<int32_t>(bay), static_cast<int32_t>(fl), b.seed);
  if (fl == 0 && b.shop) {
    if (u > 0.08f && u < 0.92f && t > 0.1f && t < 0.85f)
      return mix(b.glass, Rgb{200, 190, 160}, 0.5f * lit) * (0.7f + 0.6f * t) * light;
    return c * 0.9f * light;
  }
  const float u0 = 0.5f - 0.5f * b.win_w, u1 = 0.5f + 0.5f * b.win_w, t0 = 0.3f, t1 = 0.3f + b.win_h;
  if (u > u0 && u < u1 && t > t0 && t < t1) {
    const float frame = std::min({u - u0, u1 - u, (t - t0) * 0.5f, (t1 - t) * 0.5f});
    if (frame < 0.025f) return Rgb{210, 210, 205} * light;
    const Rgb glass = lit > 0.9f ? Rgb{230, 200, 120} : b.glass * (0.6f + 0.8f * lit);
    return glass * (0.8f + 0.4f * (t - t0) / (t1 - t0));
  }
  if (u > u0 - 0.04f && u < u1 + 0.04f && t > t0 - 0.06f && t < t0) return c * 1.15f * light;  // sill
  return c * light;
}

// Ray-casts the static scene (sky, ground, the two side walls, the wall closing the street).
inline void render_background(Canvas& cv, const Street& s) {
  const Camera& cam = s.cam;
  for (int y = 0; y < cv.h; ++y) {
    const float dy = (cam.yh - (static_cast<float>(y) + 0.5f)) / cam.f;  // ray (dx, dy, 1)
    for (int x = 0; x < cv.w; ++x) {
      const float dx = (static_cast<float>(x) + 0.5f - cam.xv) / cam.f;
      enum { kHitSky, kHitGround, kHitLeft, kHitRight, kHitEnd } hit = kHitSky;
      float best = s.z_far;
      const Block* block = nullptr;
      if (dy < 0 && cam.height / -dy < best) {
        best = cam.height / -dy;
        hit = kHitGround;
      }
      for (int side = 0; side < 2; ++side) {
        const float plane = side == 0 ? s.xl : s.xr;
        if (dx == 0 || (plane < 0) != (dx < 0)) continue;
        const float z = plane / dx, Y = cam.height + dy * z;
        if (z >= best || Y < 0) continue;
        const Block* b = (side == 0 ? s.left : s.right).at(z);
        if (b && Y <= b->height) {
          best = z;
          hit = side == 0 ? kHitLeft : kHitRight;
          block = b;
        }
      }
      if (s.z_end < best) {
        const float X = dx * s.z_end, Y = cam.height + dy * s.z_end;
        const Block* b = s.end.at(X);
        if (Y >= 0 && b && Y <= b->height) {
          best = s.z_end;
          hit = kHitEnd;
          block = b;
        }
      }
      Rgb c;
      uint8_t label = kBuilding;
      switch (hit) {
        case kHitSky:
          c = shade_sky(s, static_cast<float>(x), static_cast<float>(y), cv.w, cv.h);
          label = kSky;
          break;
        case kHitGround: c = shade_ground(s, dx * best, best, label); break;
        case kHitLeft: c = shade_facade(*block, best, cam.height + dy * best, s.left.light); break;
        case kHitRight: c = shade_facade(*block, best, cam.height + dy * best, s.right.light); break;
        case kHitEnd: c = shade_facade(*block, dx * best, cam.height + dy * best, s.end.light); break;
      }
      cv.put(x, y, hit == kHitSky ? c : fog(s, c, best), label);
    }
  }
}

// ---- objects: painted far to near ---------------------------------------------------------------------

// Paints an upright flat object standing on the ground at (X, Z). `shade(u, v, colour)` gets local
// coordinates (u metres right of X, v metres above the ground) and returns whether the pixel is
// covered; the object spans u in [u0, u1], v in [v0, v1].
template <class Shade>
void paint_billboard(Canvas& cv, const Street& s, float X, float Z, float u0, float u1, float v0, float v1,
                     uint8_t label, Shade&& shade) {
  const float scale = s.cam.f / Z, sx = s.cam.screen_x(X, Z), sy = s.cam.screen_y(0, Z);
  const int x0 = std::max(0, static_cast<int>(std::floor(sx + u0 * scale)));
  const int x1 = std::min(cv.w - 1, static_cast<int>(std::ceil(sx + u1 * scale)));
  const int y0 = std::max(0, static_cast<int>(std::floor(sy - v1 * scale)));
  const int y1 = std::min(cv.h - 1, static_cast<int>(std::ceil(sy - v0 * scale)));
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      const float u = (static_cast<float>(x) + 0.5f - sx) / scale, v = (sy - (static_cast<float>(y) + 0.5f)) / scale;
      Rgb c;
      if (shade(u, v, c)) cv.put(x, y, fog(s, c, Z), label);
    }
}

// Darkens the ground (road, sidewalk, grass) inside the ellipse centred at (X, Z) with radii (rx, rz).
inline void paint_ground_shadow(Canvas& cv, const Street& s, float X, float Z, float rx, float rz, float strength) {
  const Camera& cam = s.cam;
  const float zn = std::max(Z - rz, 0.5f);
  const int x0 =
      std::max(0, static_cast<int>(std::floor(std::min(cam.screen_x(X - rx, zn), cam.screen_x(X - rx, Z + rz)))));
  const int x1 =
      std::min(cv.w - 1, static_cast<int>(std::ceil(std::max(cam.screen_x(X + rx, zn), cam.screen_x(X + rx, Z + rz)))));
  const int y0 = std::max(0, static_cast<int>(std::floor(cam.screen_y(0, Z + rz))));
  const int y1 = std::min(cv.h - 1, static_cast<int>(std::ceil(cam.screen_y(0, zn))));
  for (int y = y0; y <= y1; ++y) {
    const float dy = (cam.yh - (static_cast<float>(y) + 0.5f)) / cam.f;
    if (dy >= 0) continue;
    const float zg = cam.height / -dy;
    for (int x = x0; x <= x1; ++x) {
      const size_t i = static_cast<size_t>(y) * cv.w + x;
      if (cv.label[i] != kRoad && cv.label[i] != kSidewalk && cv.label[i] != kVegetation) continue;
      const float xg = (static_cast<float>(x) + 0.5f - cam.xv) / cam.f * zg;
      const float e = ((xg - X) / rx) * ((xg - X) / rx) + ((zg - Z) / rz) * ((zg - Z) / rz);
      if (e < 1.f) cv.px[i] = cv.px[i] * (1.f - strength * std::sqrt(1.f - e));
    }
  }
}

struct Car {
  float x = 0, z = 0, width = 1.8f, height = 1.5f, length = 4.5f;
  Rgb paint, glass;
  bool front = false;  // facing the camera (head lights) instead of away (tail lights)
  uint32_t seed = 0;
};

inline void draw_car(Canvas& cv, const Street& s, const Car& car) {
  const Camera& cam = s.cam;
  const float W = car.width, H = car.height, L = car.length, body_top = 0.58f * H;
  paint_ground_shadow(cv, s, car.x, car.z + 0.5f * L, 0.5f * W + 0.25f, 0.5f * L + 0.3f, 0.6f);
  auto body = [&](float u, float v, float light) {
    return car.paint * light * (0.75f + 0.35f * std::clamp(v / H, 0.f, 1.f)) *
           (0.95f + 0.1f * value_noise(u * 5.f, v * 5.f, car.seed));
  };
  // The side facing the camera: the plane X = x -+ W/2 between depths z and z + L.
  const float side_x = car.x > 0 ? car.x - 0.5f * W : car.x + 0.5f * W;
  if (std::abs(car.x) > 0.5f * W) {
    const int xa = static_cast<int>(std::floor(std::min(cam.screen_x(side_x, car.z), cam.screen_x(side_x, car.z + L))));
    const int xb = static_cast<int>(std::ceil(std::max(cam.screen_x(side_x, car.z), cam.screen_x(side_x, car.z + L))));
    for (int x = std::max(0, xa); x <= std::min(cv.w - 1, xb); ++x) {
      const float dx = (static_cast<float>(x) + 0.5f - cam.xv) / cam.f;
      if (dx == 0) continue;
      const float z = side_x / dx, along = z - car.z;  // 0 at the near end, L at the far end
      if (along < 0 || along > L) continue;
      const float a = along / L;
      // Cabin between 22% and 78% of the length, its roof sloping down to the body at both ends.
      const float roof = body_top + (H - body_top) * std::clamp(std::min(a - 0.22f, 0.78f - a) / 0.08f, 0.f, 1.f);
      for (int y = 0; y < cv.h; ++y) {
        const float Y = cam.height + (cam.yh - (static_cast<float>(y) + 0.5f)) / cam.f * z;
        if (Y < 0 || Y > roof) continue;
        const float wheel_d =
            std::min(std::hypot(along - 0.18f * L, Y - 0.33f), std::hypot(along - 0.82f * L, Y - 0.33f));
        Rgb c;
        if (wheel_d < 0.33f)
          c = wheel_d < 0.18f ? Rgb{120, 120, 125} : Rgb{25, 25, 28};
        else if (Y < 0.25f)
          continue;
        else if (Y > body_top + 0.06f * H && Y < roof - 0.06f * H && a > 0.26f && a < 0.74f)
          c = car.glass * (0.7f + 0.5f * (Y - body_top) / (H - body_top));
        else
          c = body(along, Y, 0.85f);
        cv.put(x, y, fog(s, c, z), kCar);
      }
    }
  }
  // The near face (rear or front).
  paint_billboard(cv, s, car.x, car.z, -0.5f * W, 0.5f * W, 0.f, H, kCar, [&](float u, float v, Rgb& c) {
    const float au = std::abs(u);
    if (v < 0.3f) {  // wheels under the body
      if (au > 0.5f * W - 0.45f && au < 0.5f * W - 0.08f) {
        c = Rgb{25, 25, 28};
        return true;
      }
      if (v < 0.22f) return false;
    }
    if (v <= body_top) {  // rounded lower body
      const float r = 0.14f, cx = std::max(au - (0.5f * W - r), 0.f), cy = std::max(v - (body_top - r), 0.f);
      if (cx * cx + cy * cy > r * r) return false;
      if (v < 0.34f) {
        c = body(u, v, 0.5f);  // bumper
      } else if (au < 0.26f && v > 0.36f && v < 0.48f) {
        c = car.front ? Rgb{40, 40, 45} : Rgb{225, 220, 190};  // grille or number plate
      } else if (au > 0.5f * W - 0.32f && au < 0.5f * W - 0.06f && v > body_top - 0.2f && v < body_top - 0.05f) {
        c = car.front ? Rgb{235, 235, 220} : Rgb{190, 30, 25};  // lights
      } else {
        c = body(u, v, 1.f);
      }
      return true;
    }
    // Cabin: narrower towards the roof, window inside.
    const float t = (v - body_top) / (H - body_top);
    const float half = 0.5f * W * (0.92f - 0.12f * t);
    if (au > half || v > H) return false;
    if (au < half - 0.1f && t > 0.1f && t < 0.88f) {
      c = car.glass * (0.6f + 0.6f * t) + Rgb{20, 20, 20} * value_noise(u * 3.f, v * 3.f, car.seed + 1);
      return true;
    }
    c = body(u, v, 0.95f);
    return true;
  });
}

struct Person {
  float x = 0, z = 0, height = 1.75f, stride = 0;
  Rgb skin, hair, shirt, trousers;
  bool coat = false;
  uint32_t seed = 0;
};

inline void draw_person(Canvas& cv, const Street& s, const Person& p) {
  paint_ground_shadow(cv, s, p.x, p.z, 0.35f, 0.3f, 0.45f);
  const float k = p.height / 1.75f;
  paint_billboard(cv, s, p.x, p.z, -0.35f * k, 0.35f * k, 0.f, p.height, kPerson, [&](float u, float v, Rgb& c) {
    const float au = std::abs(u), n = 0.88f + 0.24f * value_noise(u * 12.f, v * 12.f, p.seed);
    const float hu = u / (0.09f * k), hv = (v - 1.63f * k) / (0.115f * k);
    if (hu * hu + hv * hv < 1.f) {  // head
      c = (v > 1.67f * k || (au > 0.065f * k && v > 1.6f * k)) ? p.hair : p.skin * n;
      return true;
    }
    if (au < 0.045f * k && v > 1.45f * k && v < 1.55f * k) {  // neck
      c = p.skin * 0.9f;
      return true;
    }
    const float torso_bottom = (p.coat ? 0.55f : 0.86f) * k;
    const float shoulder = 0.2f * k - std::max(0.f, v - 1.4f * k);
    if (au < shoulder && v > torso_bottom && v < 1.48f * k) {  // torso
      c = p.shirt * n * (0.85f + 0.2f * (v / p.height));
      return true;
    }
    if (au >= 0.19f * k && au < 0.27f * k && v > 0.8f * k && v < 1.42f * k) {  // arms, hands
      c = v < 0.9f * k ? p.skin : p.shirt * n * 0.85f;
      return true;
    }
    if (v < 0.9f * k) {  // legs, apart by the stride towards the feet
      for (int sgn = -1; sgn <= 1; sgn += 2) {
        const float centre = static_cast<float>(sgn) * (0.085f * k + p.stride * (0.9f * k - v) / (0.9f * k));
        if (std::abs(u - centre) < 0.075f * k) {
          c = v < 0.07f * k ? Rgb{30, 28, 26} : p.trousers * n;
          return true;
        }
      }
    }
    return false;
  });
}

struct Pole {
  float x = 0, z = 0, height = 6, radius = 0.1f, arm = 1.5f;
  int arm_dir = 1;  // the lamp arm points towards the road
  bool lamp = true;
  Rgb colour;
};

inline void draw_pole(Canvas& cv, const Street& s, const Pole& p) {
  const float r = std::max(p.radius, 0.5f * p.z / s.cam.f);  // at least one pixel wide
  const float reach = p.lamp ? p.arm + 0.35f : 0.f;
  const float u0 = p.arm_dir < 0 ? -reach - r : -r, u1 = p.arm_dir > 0 ? reach + r : r;
  paint_billboard(cv, s, p.x, p.z, u0, u1, 0.f, p.height + 0.1f, kPole, [&](float u, float v, Rgb& c) {
    if (std::abs(u) < r && v < p.height) {  // cylinder, lit from one side
      const float t = u / r;
      c = p.colour * (0.55f + 0.55f * std::sqrt(std::max(0.f, 1.f - t * t)) + 0.15f * t);
      return true;
    }
    if (!p.lamp) return false;
    const float a = u * static_cast<float>(p.arm_dir);
    if (a > 0 && a < p.arm && v > p.height - 0.12f && v < p.height) {
      c = p.colour * 0.9f;
      return true;
    }
    const float lu = (a - p.arm) / 0.35f, lv = (v - p.height + 0.1f) / 0.14f;
    if (lu * lu + lv * lv < 1.f) {
      c = lv < 0 ? Rgb{235, 230, 200} : p.colour * 0.7f;
      return true;
    }
    return false;
  });
}

struct Tree {
  float x = 0, z = 0, trunk_h = 2.5f, trunk_w = 0.3f, crown_r = 2;
  Rgb bark, leaf;
  int blobs = 0;
  float bu[8] = {}, bv[8] = {}, br[8] = {};  // crown blobs: centre (u, v), radius
  uint32_t seed = 0;
};

inline Tree make_tree(Rng& rng, float x, float z, float trunk_h, float crown_r) {
  Tree t;
  t.x = x;
  t.z = z;
  t.trunk_h = trunk_h;
  t.trunk_w = trunk_h > 0 ? rng.uniform(0.2f, 0.45f) : 0.f;
  t.crown_r = crown_r;
  t.bark = random_hsv(rng, 0.07f, 0.03f, 0.4f, 0.15f, 0.3f, 0.1f);
  t.leaf = random_hsv(rng, 0.27f, 0.06f, 0.55f, 0.2f, 0.42f, 0.15f);
  t.blobs = rng.uniform_int(3, 8);
  for (int i = 0; i < t.blobs; ++i) {
    t.bu[i] = rng.uniform(-0.55f, 0.55f) * crown_r;
    t.bv[i] = trunk_h + crown_r * (trunk_h > 0 ? rng.uniform(0.6f, 1.4f) : rng.uniform(0.5f, 0.7f));
    t.br[i] = crown_r * rng.uniform(0.45f, 0.75f);
  }
  t.seed = rng.seed32();
  return t;
}

inline void draw_tree(Canvas& cv, const Street& s, const Tree& t) {
  const float top = t.trunk_h + 2.4f * t.crown_r;
  paint_billboard(
      cv, s, t.x, t.z, -1.4f * t.crown_r, 1.4f * t.crown_r, 0.f, top, kVegetation, [&](float u, float v, Rgb& c) {
        float d2 = 1e9f;  // squared distance to the nearest blob, in blob radii
        for (int i = 0; i < t.blobs; ++i)
          d2 = std::min(d2, ((u - t.bu[i]) * (u - t.bu[i]) + (v - t.bv[i]) * (v - t.bv[i])) / (t.br[i] * t.br[i]));
        if (d2 < 1.6f && std::sqrt(d2) < 1.f + 0.5f * (value_noise(u * 2.5f, v * 2.5f, t.seed) - 0.5f)) {
          const float shade = 0.55f + 0.7f * fbm(u * 3.f, v * 3.f, t.seed + 7, 2);
          c = t.leaf * shade * (0.75f + 0.3f * std::clamp((v - t.trunk_h) / (2.f * t.crown_r), 0.f, 1.f));
          return true;
        }
        if (std::abs(u) < 0.5f * t.trunk_w && v < t.trunk_h + 0.3f * t.crown_r) {
          c = t.bark * (0.8f + 0.4f * value_noise(u * 20.f, v * 6.f, t.seed + 3));
          return true;
        }
        return false;
      });
}

// Cars, people, poles, trees and bushes at plausible places, painted far to near.
inline void render_objects(Canvas& cv, const Street& s, Rng& rng) {
  std::vector<Car> cars;
  std::vector<Person> people;
  std::vector<Pole> poles;
  std::vector<Tree> trees;
  const float lanes_half = 0.5f * static_cast<float>(s.lanes) * s.lane_w;
  const float kerb = s.road_half + s.curb_w;  // distance of the sidewalk from the road centre

  const int n_cars = rng.uniform_int(1, 7);
  for (int i = 0, tries = 0; i < n_cars && tries < 40; ++tries) {
    Car car;
    if (rng.chance(0.4f)) {  // parked along the curb
      const int side = rng.sign();
      car.x = s.road_c + static_cast<float>(side) * (s.road_half - 1.1f);
      car.front = rng.chance(0.5f);
    } else {
      const int lane = rng.uniform_int(0, s.lanes - 1);
      car.x = s.road_c - lanes_half + (static_cast<float>(lane) + 0.5f) * s.lane_w + rng.uniform(-0.3f, 0.3f);
      car.front = car.x < s.road_c;  // oncoming traffic on the left
    }
    car.z = 5.f + 65.f * std::pow(rng.uniform(), 1.4f);
    if (std::abs(car.x) < 1.5f && car.z < 8.f) continue;  // not on the camera's bonnet
    bool clash = false;
    for (const Car& o : cars) clash |= std::abs(o.x - car.x) < 2.2f && std::abs(o.z - car.z) < 7.f;
    if (clash) continue;
    const bool van = rng.chance(0.2f);
    car.width = rng.uniform(1.65f, 1.95f) * (van ? 1.1f : 1.f);
    car.height = van ? rng.uniform(1.9f, 2.6f) : rng.uniform(1.35f, 1.6f);
    car.length = van ? rng.uniform(5.f, 7.f) : rng.uniform(3.8f, 4.9f);
    car.paint = rng.chance(0.4f) ? hsv(0.f, 0.f, rng.uniform(0.1f, 0.95f))
                                 : random_hsv(rng, rng.uniform(), 0.f, 0.6f, 0.3f, 0.55f, 0.3f);
    car.glass = random_hsv(rng, 0.58f, 0.05f, 0.2f, 0.1f, 0.22f, 0.08f);
    car.seed = rng.seed32();
    cars.push_back(car);
    ++i;
  }

  const int n_people = rng.uniform_int(1, 10);
  for (int i = 0; i < n_people; ++i) {
    Person p;
    if (s.cross_z1 > s.cross_z0 && rng.chance(0.2f)) {  // on the crosswalk
      p.x = s.road_c + rng.uniform(-0.8f, 0.8f) * s.road_half;
      p.z = rng.uniform(s.cross_z0 + 0.5f, s.cross_z1 - 0.5f);
    } else {
      p.x = s.road_c + static_cast<float>(rng.sign()) * (kerb + rng.uniform(0.4f, s.walk_w - 0.4f));
      p.z = 3.5f + 35.f * std::pow(rng.uniform(), 1.3f);
    }
    p.height = rng.uniform(1.5f, 1.95f);
    p.stride = rng.chance(0.6f) ? rng.uniform(0.02f, 0.16f) : 0.f;
    p.skin = random_hsv(rng, 0.07f, 0.02f, 0.45f, 0.15f, 0.6f, 0.3f);
    p.hair = random_hsv(rng, 0.08f, 0.04f, 0.5f, 0.3f, 0.2f, 0.15f);
    p.shirt = random_hsv(rng, rng.uniform(), 0.f, 0.5f, 0.45f, 0.5f, 0.4f);
    p.trousers = random_hsv(rng, rng.uniform(0.55f, 0.7f), 0.f, 0.3f, 0.3f, 0.25f, 0.15f);
    p.coat = rng.chance(0.3f);
    p.seed = rng.seed32();
    people.push_back(p);
  }

  for (int side = -1; side <= 1; side += 2) {
    const float fs = static_cast<float>(side);
    const float facade = side < 0 ? s.xl : s.xr;
    if (rng.chance(0.8f)) {  // lamp poles along the curb
      const float spacing = rng.uniform(12.f, 35.f);
      const Rgb colour = rng.chance(0.5f) ? hsv(0.f, 0.f, rng.uniform(0.3f, 0.7f))
                                          : random_hsv(rng, 0.4f, 0.1f, 0.3f, 0.1f, 0.25f, 0.1f);
      const float height = rng.uniform(5.f, 9.f);
      const bool lamp = rng.chance(0.8f);
      for (float z = rng.uniform(3.f, spacing); z < 130.f; z += spacing) {
        Pole p;
        p.x = s.road_c + fs * (kerb + 0.35f);
        p.z = z;
        p.height = height;
        p.radius = rng.uniform(0.07f, 0.14f);
        p.arm = rng.uniform(1.f, 2.5f);
        p.arm_dir = -side;
        p.lamp = lamp;
        p.colour = colour;
        poles.push_back(p);
      }
    }
    if (rng.chance(0.55f)) {  // street trees on the sidewalk
      const float spacing = rng.uniform(7.f, 20.f), crown = rng.uniform(1.5f, 3.f);
      for (float z = rng.uniform(4.f, spacing + 4.f); z < 120.f; z += spacing)
        trees.push_back(make_tree(rng, s.road_c + fs * (kerb + s.walk_w * rng.uniform(0.55f, 0.8f)), z,
                                  rng.uniform(2.f, 3.5f), crown * rng.uniform(0.8f, 1.2f)));
    }
    const Wall& wall = side < 0 ? s.left : s.right;  // big trees in the gaps between buildings
    for (size_t b = 0; b + 1 < wall.blocks.size(); ++b) {
      const float g0 = wall.blocks[b].a1, g1 = wall.blocks[b + 1].a0;
      if (g1 - g0 > 3.f)
        trees.push_back(make_tree(rng, facade + fs * 0.3f, 0.5f * (g0 + g1), rng.uniform(2.f, 4.f),
                                  std::min(0.5f * (g1 - g0), rng.uniform(2.5f, 4.5f))));
    }
    if (rng.chance(0.4f))  // bushes at the foot of the facades
      for (int i = rng.uniform_int(1, 5); i > 0; --i)
        trees.push_back(
            make_tree(rng, facade - fs * rng.uniform(0.5f, 1.f), rng.uniform(3.f, 60.f), 0.f, rng.uniform(0.5f, 1.1f)));
  }

  struct Item {
    float z;
    int kind;
    size_t index;
  };
  std::vector<Item> items;
  for (size_t i = 0; i < cars.size(); ++i) items.push_back({cars[i].z, 0, i});
  for (size_t i = 0; i < people.size(); ++i) items.push_back({people[i].z, 1, i});
  for (size_t i = 0; i < poles.size(); ++i) items.push_back({poles[i].z, 2, i});
  for (size_t i = 0; i < trees.size(); ++i) items.push_back({trees[i].z, 3, i});
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.z > b.z; });
  for (const Item& it : items) {
    if (it.z >= s.z_end) continue;
    switch (it.kind) {
      case 0: draw_car(cv, s, cars[it.index]); break;
      case 1: draw_person(cv, s, people[it.index]); break;
      case 2: draw_pole(cv, s, poles[it.index]); break;
      default: draw_tree(cv, s, trees[it.index]); break;
    }
  }
}

// Global exposure, contrast, white balance, vignetting and sensor noise; quantises to uint8.
inline Image develop(const Canvas& cv, Rng& rng) {
  const float brightness = rng.uniform(0.75f, 1.2f), contrast = rng.uniform(0.8f, 1.2f);
  const float gain[3] = {rng.uniform(0.92f, 1.08f), rng.uniform(0.95f, 1.05f), rng.uniform(0.92f, 1.08f)};
  const float noise = rng.uniform(2.f, 10.f), vignette = rng.uniform(0.f, 0.3f);
  const uint32_t seed = rng.seed32();
  const float cx = 0.5f * static_cast<float>(cv.w), cy = 0.5f * static_cast<float>(cv.h);
  Image im(cv.h, cv.w, 3);
  for (int y = 0; y < cv.h; ++y)
    for (int x = 0; x < cv.w; ++x) {
      const size_t i = static_cast<size_t>(y) * cv.w + x;
      const float rx = (static_cast<float>(x) - cx) / cx, ry = (static_cast<float>(y) - cy) / cy;
      const float k = brightness * (1.f - vignette * 0.5f * (rx * rx + ry * ry));
      const float ch[3] = {cv.px[i].r, cv.px[i].g, cv.px[i].b};
      const uint32_t bits = hash32(x, y, seed);  // one byte of grain per channel
      for (int c = 0; c < 3; ++c) {
        const float grain = noise * (static_cast<float>((bits >> (8 * c)) & 255u) * (1.f / 256.f) - 0.5f);
        const float v = ((ch[c] - 128.f) * contrast + 128.f) * k * gain[c] + grain;
        im.data[3 * i + c] = static_cast<uint8_t>(std::clamp(v, 0.f, 255.f) + 0.5f);  // 255.5 truncates to 255
      }
    }
  return im;
}

// 255 on every pixel whose right or lower neighbour has another class.
inline void mark_boundaries(std::vector<uint8_t>& label, int w, int h) {
  const std::vector<uint8_t> src = label;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = static_cast<size_t>(y) * w + x;
      if ((x + 1 < w && src[i + 1] != src[i]) || (y + 1 < h && src[i + w] != src[i])) label[i] = kIgnore;
    }
}

inline void check_scene_size(const char* who, int width, int height) {
  SEGML_CHECK(width >= 16 && height >= 16 && width <= 8192 && height <= 8192, who,
              ": size must be in [16, 8192] x [16, 8192], got ", width, "x", height);
}

}  // namespace scene_detail

// One street scene; a pure function of (seed, width, height, options).
inline Scene generate_scene(uint64_t seed, int width = 320, int height = 240, const SceneOptions& options = {}) {
  scene_detail::check_scene_size("generate_scene", width, height);
  using namespace scene_detail;
  Rng rng(derive_seed(seed, 0x5CE7E, 0));
  const Street street = make_street(rng, width, height);
  Canvas cv(width, height);
  render_background(cv, street);
  render_objects(cv, street, rng);
  Scene scene;
  scene.image = develop(cv, rng);
  if (options.ignore_boundaries) mark_boundaries(cv.label, width, height);
  scene.label = Image(height, width, 1);
  scene.label.data = std::move(cv.label);
  return scene;
}

// The seed generate_scene() gets for scene `index` of split `split` (0 train, 1 val, 2 test) in
// write_synthetic_dataset(..., seed).
inline uint64_t synthetic_scene_seed(uint64_t seed, int split, int index) {
  return scene_detail::derive_seed(seed, static_cast<uint64_t>(split) + 1, static_cast<uint64_t>(index));
}

// Bump when the generator's output changes, so cached datasets on disk are regenerated.
inline constexpr int kSyntheticScenesVersion = 1;

// Writes dir/{train,val,test}/{images,labels}/NNNN.png, dir/id2label.json and dir/synthetic.json
// (the parameters). When dir/synthetic.json already describes a complete dataset with the same
// parameters, nothing is written and false is returned; otherwise the dataset is (re)generated,
// scenes in parallel, every file atomically, and true is returned. A non-empty `dir` without a
// synthetic.json is not ours: refused with an error rather than mixed with our files.
inline bool write_synthetic_dataset(const std::filesystem::path& dir, int n_train, int n_val, int n_test,
                                    int width = 320, int height = 240, uint64_t seed = 0,
                                    const SceneOptions& options = {}) {
  namespace fs = std::filesystem;
  SEGML_CHECK(n_train >= 0 && n_val >= 0 && n_test >= 0, "write_synthetic_dataset: negative split size (", n_train,
              ", ", n_val, ", ", n_test, ")");
  scene_detail::check_scene_size("write_synthetic_dataset", width, height);
  const int counts[3] = {n_train, n_val, n_test};
  const char* splits[3] = {"train", "val", "test"};
  nlohmann::json manifest = {{"generator", "segml.synthetic_scenes"},
                             {"version", kSyntheticScenesVersion},
                             {"n_train", n_train},
                             {"n_val", n_val},
                             {"n_test", n_test},
                             {"width", width},
                             {"height", height},
                             {"seed", seed},
                             {"ignore_boundaries", options.ignore_boundaries},
                             {"complete", true}};
  // Photos as JPEG (as in real datasets such as CamVid), label maps as lossless PNG.
  auto file_name = [](int i, const char* ext) {
    char name[32];
    std::snprintf(name, sizeof name, "%04d.%s", i, ext);
    return std::string(name);
  };
  const fs::path manifest_path = dir / "synthetic.json";
  if (fs::exists(manifest_path)) {
    nlohmann::json old;
    try {
      std::ifstream in(manifest_path);
      old = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
      old = nullptr;  // unreadable: regenerate
    }
    bool complete = old == manifest && fs::exists(dir / "id2label.json");
    for (int s = 0; s < 3 && complete; ++s)
      for (int i = 0; i < counts[s] && complete; ++i)
        complete = fs::exists(dir / splits[s] / "images" / file_name(i, "jpg")) &&
                   fs::exists(dir / splits[s] / "labels" / file_name(i, "png"));
    if (complete) return false;
    for (const char* split : splits) fs::remove_all(dir / split);
    fs::remove(dir / "id2label.json");
  } else if (fs::exists(dir)) {
    SEGML_CHECK(
        fs::is_directory(dir) && fs::is_empty(dir), "write_synthetic_dataset: ", dir.string(),
        " exists and is not an empty folder made by this generator (no synthetic.json); refusing to write into it");
  }

  auto write_json = [](const fs::path& path, const nlohmann::json& j) {
    const std::string text = j.dump(1) + "\n";
    safetensors::write_file_atomic(path.string(), std::vector<char>(text.begin(), text.end()));
  };
  for (const char* split : splits) {
    fs::create_directories(dir / split / "images");
    fs::create_directories(dir / split / "labels");
  }
  nlohmann::json incomplete = manifest;
  incomplete["complete"] = false;
  write_json(manifest_path, incomplete);
  nlohmann::json id2label = nlohmann::json::object();
  for (size_t i = 0; i < synthetic_id2label().size(); ++i) id2label[std::to_string(i)] = synthetic_id2label()[i];
  write_json(dir / "id2label.json", id2label);

  std::vector<std::pair<int, int>> jobs;  // (split, index)
  for (int s = 0; s < 3; ++s)
    for (int i = 0; i < counts[s]; ++i) jobs.emplace_back(s, i);
  std::exception_ptr error;
  std::mutex error_mutex;
  parallel_for(static_cast<int64_t>(jobs.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      try {
        const auto [s, i] = jobs[static_cast<size_t>(j)];
        const Scene scene = generate_scene(synthetic_scene_seed(seed, s, i), width, height, options);
        save_jpeg((dir / splits[s] / "images" / file_name(i, "jpg")).string(), scene.image);
        save_png((dir / splits[s] / "labels" / file_name(i, "png")).string(), scene.label);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        return;
      }
    }
  });
  if (error) std::rethrow_exception(error);
  write_json(manifest_path, manifest);
  return true;
}

}  // namespace segml
