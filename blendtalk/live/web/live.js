// blendtalk live page: microphone -> 16 kHz int16 over a WebSocket -> ARKit weights back -> three.js face.
// The face is /live/face_arkit.glb (the dressed rig, 52 ARKit morph targets with normal offsets) drawn
// in the file renderer's look, /live/face_look.json (camera, lights, material, and each unit's wrinkle
// lines, creases and nasolabial fold rise, blended per frame: blendtalk/live/look.py); both loaded once. Per frame only the
// weights, the head rotation and the gaze arrive (format "blendtalk-live" v1, docs/live.md).
import * as THREE from "three";
import { GLTFLoader } from "/live/static/vendor/three/examples/jsm/loaders/GLTFLoader.js";

const query = new URLSearchParams(location.search);
const badParams = [];  // shown once the page is up: a bad value gets one line and the default
function numberParam(name, fallback, ok, hint) {
  const raw = query.get(name);
  if (raw === null) return fallback;
  if (ok(Number(raw))) return Number(raw);
  badParams.push(`?${name}=${raw} is not used: ${hint}`);
  return fallback;
}
// ?chunk=10: 10 ms audio messages; the server's window then waits 4 ms for its last sample, not up to 14 (docs/live.md)
const RATE = 16000, CHUNK = RATE / 1000 * numberParam("chunk", 20, (v) => v === 10 || v === 20, "give 10 or 20 (ms)");
// ?audio-rate=HZ asks the browser for that audio rate instead of 16 kHz, as a browser that refuses 16 kHz does: the
// page then resamples (`resampler`), and a test can run that path in a browser that would grant 16 kHz.
const AUDIO_RATE = numberParam("audio-rate", RATE, (v) => Number.isInteger(v) && v >= 8000 && v <= 96000, "give 8000 to 96000 (Hz)");
// Frames are shown at their audio time + this jitter buffer; ?playout=MS (0-500) for a server whose frames come evenly.
const PLAYOUT_MS = numberParam("playout", 40, (v) => Number.isFinite(v) && v >= 0 && v <= 500, "give 0 to 500 (ms)");
const $ = (id) => document.getElementById(id);
const stats = window.liveStats = { applied: 0, received: 0, fps: 0, latency: [], serverLatency: [], status: "idle",
                                   mouthHistory: [], errors: [] };

// ---- the face ----
const canvas = $("view");
if (!document.createElement("canvas").getContext("webgl2")) {  // three.js needs WebGL 2: say so instead of failing silently
  status("This browser cannot draw WebGL 2 here (hardware acceleration off, or no GPU driver), so the face cannot " +
         "be shown. Turn hardware acceleration on, or use another browser; the frame stream (docs/live.md) still works.", true);
  $("start").disabled = true;
  throw new Error("no WebGL 2");
}
const renderer = new THREE.WebGLRenderer({ canvas, antialias: false });
renderer.setPixelRatio(1);
renderer.outputColorSpace = THREE.SRGBColorSpace;
// A shader that does not compile (a look baked with another wrinkle GLSL) would draw nothing, silently:
// say so on the page and in liveStats.errors, which the browser tests read.
renderer.debug.onShaderError = (gl, program, vs, fs) => {
  const log = [gl.getProgramInfoLog(program), gl.getShaderInfoLog(vs), gl.getShaderInfoLog(fs)].filter(Boolean).join(" ").trim();
  console.error(`the face's shader did not compile: ${log}`);
  status(`The face's shader did not compile (rebuild the look: python tools/build_live_glb.py): ${log.slice(0, 300)}`, true);
};
const scene = new THREE.Scene();
scene.background = new THREE.Color(0xd4d4d8);
const camera = new THREE.PerspectiveCamera(18, 1, 0.01, 20);
let meshes = [], head = null, eyes = [], names = [], look = null;
const fallbackLights = [new THREE.HemisphereLight(0xffffff, 0x707070, 1.6), new THREE.DirectionalLight(0xffffff, 1.6)];
const loaded = Promise.all([
  new Promise((resolve, reject) => new GLTFLoader().load("/live/face_arkit.glb", resolve, undefined, reject)),
  // ?look=plain: three.js's own lights and material, lighter for software WebGL on a weak machine.
  new URLSearchParams(location.search).get("look") === "plain" ? null
    : fetch("/live/face_look.json").then((r) => (r.ok ? r.json() : null)).catch(() => null),
]);
loaded.then(([gltf, bakedLook]) => {
  scene.add(gltf.scene);
  gltf.scene.traverse((o) => { if (o.isMesh && o.morphTargetDictionary) meshes.push(o); });
  head = gltf.scene.getObjectByName("head");
  eyes = ["left_eye", "right_eye"].map((n) => gltf.scene.getObjectByName(n)).filter(Boolean);
  gltf.scene.updateMatrixWorld(true);
  look = bakedLook && bakedLook.format === "blendtalk-live-look" ? makeLook(bakedLook) : null;
  if (!look) {  // ?look=plain or an older asset folder: three.js's own lights and the GLB's material, framed on the face
    fallbackLights[1].position.set(0.4, 0.8, 1.2);
    fallbackLights.forEach((l) => scene.add(l));
    const box = new THREE.Box3().setFromObject(meshes.find((m) => m.name === "face") || meshes[0]);
    const centre = box.getCenter(new THREE.Vector3()), size = box.getSize(new THREE.Vector3());
    camera.position.set(centre.x, centre.y, centre.z + 0.85 * size.y / Math.tan(THREE.MathUtils.degToRad(9)) / 2 + size.z);
    camera.lookAt(centre);
  }
  drawn = -1;  // draw the face at rest now, not only once frames come
  stats.loaded = true;
  stats.look = !!look;
  stats.box = [camera.position.toArray(), meshes.length];
}, (err) => fail(`the face model did not load: ${(err && err.message) || err}`));

// ---- the file renderer's look (blendtalk/live/look.py): its camera, lights, per-vertex material, and
// the wrinkle lines, creases and nasolabial fold rise each unit makes, blended here by the frame's weights.
function decode(b64, Type) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Type(bytes.buffer);
}
const VERTEX = `
#include <common>
#include <morphtarget_pars_vertex>
attribute vec4 lookMaterial;  // linear albedo after the cavity tint and occlusion, sheen
attribute vec2 lookPhase;     // wrinkle line phases in rest-pose coordinates
attribute vec3 lookDynamic;   // this frame's [vertical, horizontal] line amounts and crease darkening
attribute vec3 lookFold;      // distance across the nasolabial fold (half-widths), weight of the left and right fold's line
attribute vec3 lookBrow;      // rest-pose brow coordinates and gate (face/brows.py)
uniform vec2 foldDepths;      // this frame's depth of the left and right fold
varying vec3 vNormal;
varying vec3 vBrow;
varying vec4 vWrinkle;
varying vec2 vFold;
varying vec3 vBase;
varying float vSheen;
void main() {
  #include <morphinstance_vertex>
  #include <beginnormal_vertex>
  #include <morphnormal_vertex>
  #include <begin_vertex>
  #include <morphtarget_vertex>
  vNormal = normalMatrix * objectNormal;  // view space: the file renderer's camera space
  vBase = lookMaterial.rgb * lookDynamic.z;
  vSheen = lookMaterial.a;
  vWrinkle = vec4(lookPhase, lookDynamic.xy);
  vFold = vec2(lookFold.x, dot(lookFold.yz, foldDepths));  // render.wrinkles: fold depth times the side's line
  vBrow = lookBrow;
  gl_Position = projectionMatrix * modelViewMatrix * vec4(transformed, 1.0);
}`;
const FRAGMENT = (lights, glsl, browGlsl) => `
const int LIGHTS = ${lights};
uniform vec3 browTint;
${browGlsl}
varying vec3 vBrow;
uniform vec3 lightDirs[LIGHTS];
uniform vec3 halfways[LIGHTS];
uniform float intensities[LIGHTS];
uniform float ambient;
uniform float shininess;
${glsl}
varying vec3 vNormal;
varying vec4 vWrinkle;
varying vec2 vFold;
varying vec3 vBase;
varying float vSheen;
void main() {  // render/gl.py's fragment shader for surfaces facing the camera: Lambert + Blinn-Phong, sRGB
  vec3 n = normalize(vNormal);
  float diffuse = 0.0, spec = 0.0;
  for (int i = 0; i < LIGHTS; i++) {
    diffuse += intensities[i] * max(dot(n, lightDirs[i]), 0.0);
    spec += intensities[i] * pow(max(dot(n, halfways[i]), 0.0), shininess);
  }
  // Only skin with lines or a fold pays for the pattern: software WebGL draws every pixel on the CPU.
  float lines = vWrinkle.z + vWrinkle.w + vFold.y > 0.0 ? wrinkle_factor(vWrinkle, vFold) : 1.0;
  vec3 brow = vBrow.z > 0.999 ? mix(vec3(1.0), browTint, brow_density(vBrow)) : vec3(1.0);
  vec3 c = clamp(vBase * lines * brow * (diffuse + ambient) + vSheen * spec, 0.0, 1.0);
  vec3 srgb = mix(1.055 * pow(max(c, vec3(1e-8)), vec3(1.0 / 2.4)) - 0.055, c * 12.92, vec3(lessThanEqual(c, vec3(0.0031308))));
  gl_FragColor = vec4(srgb, 1.0);
}`;

function makeLook(baked) {
  const cam = baked.camera;
  camera.fov = cam.fov_deg; camera.near = cam.near; camera.far = cam.far;
  camera.position.fromArray(cam.position);
  camera.up.fromArray(cam.up);
  camera.lookAt(new THREE.Vector3().fromArray(cam.target));
  camera.updateProjectionMatrix();
  scene.background = new THREE.Color().setRGB(...baked.background, THREE.SRGBColorSpace);
  const face = baked.parts.face;
  const wrinkles = face.wrinkle_channels === 2;  // the line pattern (wrinkles.wrinkle_glsl) takes two channels
  const folds = !!face.fold_rise && baked.wrinkle.fold_strength > 0;
  const material = new THREE.ShaderMaterial({
    vertexShader: VERTEX, fragmentShader: FRAGMENT(baked.intensities.length, baked.wrinkle_glsl,
                                                    baked.brow_glsl || "float brow_density(vec3 b) { return 0.0; }"), side: THREE.FrontSide,
    uniforms: {
      lightDirs: { value: baked.lights.map((v) => new THREE.Vector3().fromArray(v)) },
      halfways: { value: baked.halfways.map((v) => new THREE.Vector3().fromArray(v)) },
      intensities: { value: baked.intensities }, ambient: { value: baked.ambient },
      shininess: { value: baked.shininess },
      wrinkle_shape: { value: new THREE.Vector3(wrinkles ? baked.wrinkle.strength : 0, baked.wrinkle.sharpness,
                                                folds ? baked.wrinkle.fold_strength : 0) },
      foldDepths: { value: new THREE.Vector2(0, 0) },
      browTint: { value: new THREE.Vector3().fromArray(baked.brow_tint || [1, 1, 1]) },
    },
  });
  let faceGeometry = null;
  for (const mesh of meshes) {
    const part = baked.parts[mesh.name];
    const g = mesh.geometry, n = g.getAttribute("position").count;
    if (!part || part.count !== n) return null;  // the look was baked for another GLB: keep the old look
    g.setAttribute("lookMaterial", new THREE.BufferAttribute(decode(part.material, Float32Array), 4));
    const phase = part.phase ? decode(part.phase, Float32Array) : new Float32Array(n * 2);
    g.setAttribute("lookPhase", new THREE.BufferAttribute(phase.length === n * 2 ? phase : padded(phase, n * 2), 2));
    const dynamic = new Float32Array(n * 3);
    for (let i = 0; i < n; i++) dynamic[3 * i + 2] = 1;  // no lines, no crease
    g.setAttribute("lookDynamic", new THREE.BufferAttribute(dynamic, 3).setUsage(THREE.DynamicDrawUsage));
    const fold = new Float32Array(n * 3);  // no fold but on the face
    if (folds && mesh.name === "face") {
      const coordinate = decode(face.fold_coordinate, Float32Array), line = face.fold_line;
      for (let i = 0; i < Math.min(n, coordinate.length); i++) fold[3 * i] = coordinate[i];
      if (line.count) {
        const index = decode(line.index, Uint32Array), values = decode(line.values, Float32Array);
        for (let i = 0; i < index.length; i++) { fold[3 * index[i] + 1] = values[2 * i]; fold[3 * index[i] + 2] = values[2 * i + 1]; }
      }
    }
    g.setAttribute("lookFold", new THREE.BufferAttribute(fold, 3));
    const brows = face.brows && mesh.name === "face" ? decode(face.brows, Float32Array) : new Float32Array(0);
    const browAttribute = new THREE.BufferAttribute(brows.length === n * 3 ? brows : padded(brows, n * 3), 3);
    g.setAttribute("lookBrow", mesh.name === "face" ? browAttribute.setUsage(THREE.DynamicDrawUsage) : browAttribute);
    mesh.material = material;
    if (mesh.name === "face") faceGeometry = g;
  }
  if (!faceGeometry) return null;
  const unpack = (list, width) => list.map((u) => (u.count ? { index: decode(u.index, Uint32Array),
                                                               values: decode(u.values, Float32Array), width } : null));
  const c = face.wrinkle_channels;
  return { dynamic: faceGeometry.getAttribute("lookDynamic"), v: face.face_vertices, channels: c,
           levels: [0, ...face.wrinkle_levels], mask: decode(face.wrinkle_mask, Float32Array),
           onset: face.wrinkle_onset, full: face.wrinkle_full, crease: baked.crease, wrinkles: wrinkles,
           units: baked.units, squeezes: unpack(face.wrinkles, face.wrinkle_levels.length * c),
           creases: unpack(face.creases, 1), squeeze: new Float32Array(face.face_vertices * c),
           concave: new Float32Array(face.face_vertices), folds: folds, foldRise: face.fold_rise,
           foldOnset: face.fold_onset, foldFull: face.fold_full, foldDepths: material.uniforms.foldDepths.value,
           brow: faceGeometry.getAttribute("lookBrow"), browRest: faceGeometry.getAttribute("lookBrow").array.slice(),
           browRide: face.brow_ride ? unpack(face.brow_ride, 2) : [] };
}
function padded(a, n) { const out = new Float32Array(n); out.set(a.subarray(0, Math.min(a.length, n))); return out; }

function shade(arkit) {  // look.py's `blend` and `blend_folds`: per-unit squeeze, creases and fold rise summed by weight, then the ramps
  const L = look, c = L.channels, levels = L.levels, last = levels.length - 2;
  L.squeeze.fill(0); L.concave.fill(0);
  const rise = [0, 0];
  L.units.forEach((name, k) => {
    const w = arkit[name] || 0;
    if (w <= 0) return;
    const s = L.squeezes[k];
    if (s) {
      let j = 0;
      while (j < last && w >= levels[j + 1]) j++;
      const f = (w - levels[j]) / (levels[j + 1] - levels[j]);
      for (let i = 0; i < s.index.length; i++) {
        const base = i * s.width, v = s.index[i] * c;
        for (let ch = 0; ch < c; ch++) {
          const lo = j === 0 ? 0 : s.values[base + (j - 1) * c + ch], hi = s.values[base + j * c + ch];
          L.squeeze[v + ch] += lo + f * (hi - lo);
        }
      }
    }
    const cr = L.creases[k];
    if (cr) for (let i = 0; i < cr.index.length; i++) L.concave[cr.index[i]] += w * cr.values[i];
    if (L.folds) { rise[0] += w * L.foldRise[k][0]; rise[1] += w * L.foldRise[k][1]; }
  });
  // face/brows.py's BrowRide: the brows move with the skin of their centre line, linear in the weights.
  const brow = L.brow.array;
  brow.set(L.browRest);
  L.units.forEach((name, k) => {
    const w = arkit[name] || 0, d = L.browRide[k];
    if (w <= 0 || !d) return;
    for (let i = 0; i < d.index.length; i++) {
      brow[3 * d.index[i]] += w * d.values[2 * i];
      brow[3 * d.index[i] + 1] += w * d.values[2 * i + 1];
    }
  });
  L.brow.needsUpdate = true;
  const depth = rise.map((r) => {  // Wrinkles.fold_depths' smoothstep between the onset and full rise
    const x = Math.min(Math.max((r - L.foldOnset) / (L.foldFull - L.foldOnset), 0), 1);
    return L.folds ? x * x * (3 - 2 * x) : 0;
  });
  L.foldDepths.set(depth[0], depth[1]);
  stats.foldDepths = depth;
  const out = L.dynamic.array;
  for (let v = 0; v < L.v; v++) {
    for (let ch = 0; ch < 2 && ch < c; ch++) {
      let r = (L.squeeze[v * c + ch] - L.onset[ch]) / (L.full[ch] - L.onset[ch]);
      r = Math.min(Math.max(r, 0), 1);
      out[3 * v + ch] = L.wrinkles ? r * r * (3 - 2 * r) * L.mask[v * c + ch] : 0;
    }
    out[3 * v + 2] = Math.max(1 - L.crease.strength * Math.max(L.concave[v], 0), L.crease.floor);
  }
  L.dynamic.needsUpdate = true;
}

function apply(frame) {
  for (const mesh of meshes) {
    const dict = mesh.morphTargetDictionary, infl = mesh.morphTargetInfluences;
    for (const [name, w] of Object.entries(frame.arkit)) { const k = dict[name]; if (k !== undefined) infl[k] = w; }
  }
  if (look) {
    const t0 = performance.now();
    shade(frame.arkit);
    stats.shadeMs = 0.9 * (stats.shadeMs || 0) + 0.1 * (performance.now() - t0);  // running mean
  }
  if (head && frame.head) head.rotation.set(frame.head[0], frame.head[1], -frame.head[2], "YXZ");  // R = Ryaw Rpitch Rroll
  for (const eye of eyes) if (frame.eyes) eye.rotation.set(-frame.eyes[1], frame.eyes[0], 0, "YXZ");
  stats.applied += 1;
  stats.appliedTimes.push(performance.now());
  stats.lastFrame = frame.frame;
  stats.mouthHistory.push([performance.now(), frame.arkit.jawOpen || 0, frame.arkit.mouthClose || 0, frame.arkit.mouthFunnel || 0,
                          frame.t]);
  if (stats.mouthHistory.length > 3000) stats.mouthHistory.splice(0, 1000);
}
stats.appliedTimes = [];
// Draw one frame without a microphone (frame format v1, docs/live.md): eval/live_look.py puts the
// page's face beside the file renderer's on the same weights.
window.liveShow = (frame) => { apply({ frame: -1, head: [0, 0, 0], eyes: [0, 0], ...frame }); };
// The face as drawn now, as a PNG data URL: drawn and read in one task, so the canvas needs no
// preserved buffer (eval/live_legibility.py captures many more frames a second this way than by screenshots).
window.liveCapture = () => { renderer.render(scene, camera); return canvas.toDataURL("image/png"); };

// ---- playout: each frame applied at its audio time (+ a jitter buffer), on a timer of its own; the
// display redraws the latest state whenever it can (software WebGL may draw slower than 30 frames/s).
let clockStart = null;
function schedule(frame) {
  const now = performance.now();
  if (clockStart === null) clockStart = now - frame.t * 1000;
  let due = clockStart + frame.t * 1000 + PLAYOUT_MS;
  if (now - due > 250) { clockStart = now - frame.t * 1000 - PLAYOUT_MS; due = now; }  // resynchronise after a stall
  setTimeout(() => apply(frame), Math.max(0, due - now));
}
function count() {  // distinct frames applied in the last second
  const now = performance.now();
  stats.appliedTimes = stats.appliedTimes.filter((t) => t > now - 1000);
  stats.fps = stats.appliedTimes.length;
}
setInterval(count, 100);
stats.draws = 0;
let drawn = -1;
function tick() {
  requestAnimationFrame(tick);
  if (drawn === stats.applied && stats.draws > 0) return;  // draw only when a new frame was applied
  drawn = stats.applied;
  try {
    const t0 = performance.now();
    renderer.render(scene, camera);
    stats.drawMs = 0.9 * (stats.drawMs || 0) + 0.1 * (performance.now() - t0);  // running mean (the GPU's share may come later)
    stats.draws += 1;
  } catch (err) {
    if (!stats.drawError) { stats.drawError = String(err); status(`The face cannot be drawn: ${err}`, true); }
  }
}
requestAnimationFrame(tick);

// ---- microphone and socket ----
let ws = null, ctx = null, stream = null, node = null, take = [], takeId = null, captured = [], pending = new Float32Array(0), sent = 0;
let token = (window.BLENDTALK_LIVE || {}).token;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
  stats.status = text;
  if (error) stats.errors.push(text);
}
function fail(text) { status(text, true); stop(false); }

function percentile(values, p) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
}

// A windowed-sinc low-pass (Blackman window) for audio at `fromRate`, passing up to `cutoff` Hz:
// about 64 taps per output sample's span, a transition band of about 1.4 kHz above the cutoff.
function lowpass(fromRate, cutoff) {
  const half = Math.round(32 * fromRate / RATE), n = 2 * half + 1, fc = cutoff / fromRate;
  const taps = new Float32Array(n);
  let sum = 0;
  for (let k = 0; k < n; k++) {
    const m = k - half, w = 0.42 - 0.5 * Math.cos(2 * Math.PI * k / (n - 1)) + 0.08 * Math.cos(4 * Math.PI * k / (n - 1));
    taps[k] = (m === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * m) / (Math.PI * m)) * w;
    sum += taps[k];
  }
  return taps.map((t) => t / sum);  // unit gain at 0 Hz
}

// Blocks at `fromRate` -> blocks at 16 kHz, state kept across blocks. Going down, a low-pass below
// 7 kHz first: linear interpolation alone folds everything above 8 kHz (a fricative's hiss) back
// into the speech band. Then linear interpolation between the filtered samples.
function resampler(fromRate) {
  const step = fromRate / RATE;
  const taps = fromRate > RATE ? lowpass(fromRate, 7000) : Float32Array.of(1);
  let history = new Float32Array(taps.length - 1);  // the input's last samples, for the next block's filter
  let pos = 0, last = 0;
  return (block) => {
    const input = new Float32Array(history.length + block.length);
    input.set(history); input.set(block, history.length);
    const x = new Float32Array(block.length);  // filtered, (taps.length - 1) / 2 samples late
    for (let i = 0; i < x.length; i++) {
      let acc = 0;
      for (let k = 0; k < taps.length; k++) acc += taps[k] * input[i + k];
      x[i] = acc;
    }
    history = input.slice(input.length - history.length);
    const out = [];
    while (pos < x.length) {
      const i = Math.floor(pos), f = pos - i;
      const a = i === 0 ? last : x[i - 1], b = x[i];
      out.push(a + (b - a) * f);  // sample at pos - 1 (one sample of delay keeps `last` usable)
      pos += step;
    }
    pos -= x.length;
    if (x.length) last = x[x.length - 1];
    return Float32Array.from(out);
  };
}
window.liveResampler = resampler;  // for the browser tests

async function start() {
  $("start").disabled = true;
  take = []; takeId = null; $("save-mp4").disabled = true; captured = []; sent = 0; clockStart = null; pending = new Float32Array(0);
  stats.latency = []; stats.serverLatency = []; stats.received = 0;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return fail("This browser gives the microphone only to https:// pages or localhost; open the app over https.");
  }
  // The audio context is made here, in the click itself: browsers keep one made later (after the
  // awaits below) suspended as autoplay, and Firefox then never runs its worklet.
  // Firefox has long refused to connect a microphone to a context of another rate than the microphone's
  // (NotSupportedError at createMediaStreamSource, Mozilla bug 1725336, reported through 2025; ESR 153
  // accepts it), so there the context keeps the device's rate and the page resamples. Other browsers
  // resample into a 16 kHz context themselves.
  const ownRate = /Firefox\//.test(navigator.userAgent) && !query.has("audio-rate");
  try { ctx = ownRate ? new AudioContext() : new AudioContext({ sampleRate: AUDIO_RATE }); } catch (e) { ctx = new AudioContext(); }
  ctx.resume();
  stats.audio = ctx.state;
  stats.audioRate = ctx.sampleRate;  // 16000, or the device's rate (Firefox, or a browser that refuses 16 kHz): then resampled
  ctx.onstatechange = () => { stats.audio = ctx && ctx.state; };
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
                                                                   noiseSuppression: false, autoGainControl: false } });
  } catch (err) {
    const why = err && err.name === "NotAllowedError" ? "The microphone was refused" :
                err && err.name === "NotFoundError" ? "No microphone was found" : `The microphone failed (${err && err.name})`;
    return fail(`${why}: allow the microphone for this page (the icon left of the address bar) and press Start again. ` +
                "Without a microphone: python -m blendtalk live --input FILE.");
  }
  // A microphone unplugged, or its permission withdrawn, ends its track: say so and end the session,
  // rather than listen to nothing until the server's time cap.
  stream.getAudioTracks().forEach((track) => track.addEventListener("ended", () => {
    if (ws) ws.close();
    fail("The microphone stopped (unplugged, switched off, or its permission withdrawn): connect it and press Start again.");
  }));
  if (!token) token = (await (await fetch("/live/token")).json()).token;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/live/ws?token=${encodeURIComponent(token)}`);
  token = null;  // single use
  ws.binaryType = "arraybuffer";
  ws.onopen = async () => {
    ws.send(JSON.stringify({ type: "start", emotion: $("emotion").value, intensity: +$("intensity").value, sample_rate: RATE }));
    if (!ctx) return;  // stopped while the socket opened
    let src;
    try {
      src = ctx.createMediaStreamSource(stream);
    } catch (err) {
      ws.close();
      return fail(`This browser would not take the microphone into ${ctx.sampleRate} Hz audio (${err && err.name}). ` +
                  "Reload the page without ?audio-rate, or use another browser.");
    }
    const code = "class Tap extends AudioWorkletProcessor { process(inputs) { const c = inputs[0][0]; " +
                 "if (c) this.port.postMessage(c.slice(0)); return true; } } registerProcessor('tap', Tap);";
    await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: "application/javascript" })));
    node = new AudioWorkletNode(ctx, "tap");
    const toRate = ctx.sampleRate === RATE ? (x) => x : resampler(ctx.sampleRate);
    node.port.onmessage = (e) => {
      const x = toRate(e.data);
      const joined = new Float32Array(pending.length + x.length);
      joined.set(pending); joined.set(x, pending.length);
      let i = 0;
      for (; i + CHUNK <= joined.length; i += CHUNK) {
        const pcm = new Int16Array(CHUNK);
        for (let k = 0; k < CHUNK; k++) pcm[k] = Math.max(-32768, Math.min(32767, Math.round(joined[i + k] * 32768)));
        if (ws && ws.readyState === 1) ws.send(pcm.buffer);
        captured.push(performance.now());  // when chunk `sent` was complete
        if (captured.length > 20000) captured = captured.slice(-10000);  // bounded: old times are not needed
        sent += 1;
      }
      pending = joined.slice(i);
      stats.sent = sent;
    };
    src.connect(node);
    $("stop").disabled = false;
    status("Listening: speak.");
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "hello") { names = m.arkit_names; stats.hello = m; }
    else if (m.type === "frame") {
      stats.received += 1;
      schedule(m);
      take.push(m);
      if (take.length > 30 * 600) take.shift();  // the take keeps the last 10 minutes
      const chunk = Math.ceil((m.frame + 1) * RATE / 30 / CHUNK) - 1;  // the chunk that ended this frame's own audio
      const at = captured[chunk - (sent - captured.length)];
      if (at !== undefined) stats.latency.push(performance.now() - at);
      stats.serverLatency.push(m.latency_ms);
      if (stats.latency.length > 300) stats.latency.shift();
      if (stats.serverLatency.length > 300) stats.serverLatency.shift();
      if (stats.received % 15 === 0) {
        $("latency").textContent = `latency (own audio -> weights here): p50 ${percentile(stats.latency, 50).toFixed(0)} ms, ` +
          `p95 ${percentile(stats.latency, 95).toFixed(0)} ms (server ${percentile(stats.serverLatency, 50).toFixed(0)} ms)`;
        $("rate").textContent = `frames/s applied: ${stats.fps}`;
      }
    } else if (m.type === "notice") status(m.text);
    else if (m.type === "error") fail(m.text);
    else if (m.type === "take") { takeId = m.id; $("save-mp4").disabled = false; }  // kept on the server 10 min
    else if (m.type === "end") status(`Stopped after ${m.frames} frames.`);
  };
  ws.onclose = () => { if (stats.status.startsWith("Listening")) status("The connection closed."); stop(false); };
  ws.onerror = () => fail("The live connection failed (is the server up?).");
}

function stop(sendStop = true) {
  if (sendStop && ws && ws.readyState === 1) ws.send(JSON.stringify({ type: "stop" }));
  if (node) { node.port.onmessage = null; node.disconnect(); node = null; }
  if (ctx) { ctx.close(); ctx = null; }
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
  $("start").disabled = false;
  $("stop").disabled = true;
  $("save").disabled = take.length === 0;
}

function sendExpression() {
  $("intensity-value").textContent = (+$("intensity").value).toFixed(2);
  if (ws && ws.readyState === 1) ws.send(JSON.stringify({ type: "expression", emotion: $("emotion").value, intensity: +$("intensity").value }));
}

function download(blob, name) {  // hand the browser a file to save
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
}

async function saveTakeVideo() {  // the server renders the take it kept (audio + the face drawn here)
  if (!takeId) return;
  $("save-mp4").disabled = true;
  status("Rendering the take's video on the server...");
  try {
    const r = await fetch(`/live/take/${encodeURIComponent(takeId)}.mp4?size=256`);
    if (!r.ok) {
      const e = await r.json().catch(() => ({ error: `the server answered ${r.status}` }));
      fail(e.error);
      return;
    }
    download(await r.blob(), "blendtalk-live-take.mp4");
    status("Saved the take's video.");
  } catch (err) {
    fail("The video could not be fetched (is the server up?).");
  } finally {
    $("save-mp4").disabled = !takeId;
  }
}

async function saveTake() {  // the server's CSV of the take it kept (Live Link Face's layout, as the CLI writes it)
  if (takeId) {
    try {
      const r = await fetch(`/live/take/${encodeURIComponent(takeId)}.csv`);
      if (r.ok) {
        download(await r.blob(), "blendtalk-live-take.csv");
        return status("Saved the take's curves (ARKit CSV).");
      }
    } catch (err) { /* the frames received here, below */ }
  }
  saveReceivedTake();
  status("Saved the frames this page received (ARKit CSV).");
}

function saveReceivedTake() {  // without a take kept on the server: the frames received, in Live Link Face's layout
  // Its rotation columns in radians with its signs (yaw + toward the face's right, pitch + down), as the server's CSV has them.
  const rot = ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
               "RightEyeYaw", "RightEyePitch", "RightEyeRoll"];
  const pascal = names.map((n) => n.charAt(0).toUpperCase() + n.slice(1));
  const lines = [["Timecode", "BlendShapeCount", ...pascal, ...rot].join(",")];
  for (const f of take) {
    const s = Math.floor(f.t), ff = Math.round((f.t - s) * 30);
    const tc = `${String(Math.floor(s / 3600)).padStart(2, "0")}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:` +
               `${String(s % 60).padStart(2, "0")}:${String(ff).padStart(2, "0")}.000`;
    const [pitch, yaw, roll] = f.head, eye = [-f.eyes[0], -f.eyes[1], 0];
    lines.push([tc, names.length + rot.length, ...names.map((n) => (f.arkit[n] || 0).toFixed(6)),
                -yaw, pitch, roll, ...eye, ...eye].join(","));
  }
  download(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }), "blendtalk-live-take.csv");
}

$("start").onclick = start;
$("stop").onclick = () => stop(true);
$("emotion").onchange = sendExpression;
$("intensity").oninput = sendExpression;
$("save").onclick = saveTake;
$("save-mp4").onclick = saveTakeVideo;
if (badParams.length) status(badParams.join("; "), true);
if (query.get("autostart") === "1") start();
