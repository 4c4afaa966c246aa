// RoPE in Hugging Face's rotate-half layout, in place on [rows, heads * hd]; position
// offset + row % seq (offset: where a generation's new rows start).
// inverse != 0 rotates by minus the angle, which is the backward. cos/sin: [seq, hd / 2].
// Generated constants: WG.

struct Params { rows: u32, heads: u32, hd: u32, seq: u32, inverse: u32, offset: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.hd / 2u;
    let idx = flat_index(gid, nwg, WG);
    if (idx >= p.rows * p.heads * half) { return; }
    let i = idx % half;
    let h = (idx / half) % p.heads;
    let row = idx / (half * p.heads);
    let pos = p.offset + row % p.seq;
    let c = cos_t[pos * half + i];
    var s = sin_t[pos * half + i];
    if (p.inverse != 0u) { s = -s; }
    let base = row * p.heads * p.hd + h * p.hd + i;
    let a = x[base];
    let b = x[base + half];
    x[base] = a * c - b * s;
    x[base + half] = b * c + a * s;
}
