// Causal grouped-query attention of a few new queries against a key/value cache (generation):
// query i of n sits at position past + i and attends to cache rows 0..=past + i, which hold
// the keys and values of every earlier position and of the new ones. One workgroup per
// (query, head): its WG invocations score a tile of WG keys at once, one key each, then every
// invocation folds the tile into the online-softmax accumulator of its own channels
// (c = li, li + WG, ...). No score matrix exists.
// q, o: [n, heads * HD]; k, v: [cache rows, kv_heads * HD].
// Generated constants: HD (head width), WG (invocations per workgroup), ACC = ceil(HD / WG).
// Grid: (n, heads).

struct Params { n: u32, past: u32, heads: u32, kv_heads: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> qs: array<f32, HD>;
var<workgroup> w: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wid.x;
    let h = wid.y;
    let kh = h / (p.heads / p.kv_heads);
    let q_stride = p.heads * HD;
    let kv_stride = p.kv_heads * HD;
    let len = p.past + i + 1u;
    for (var c = li; c < HD; c += WG) { qs[c] = q[i * q_stride + h * HD + c] * p.scale; }
    workgroupBarrier();
    var acc: array<f32, ACC>;
    for (var a = 0u; a < ACC; a++) { acc[a] = 0.0; }
    var m = NEG_BIG;
    var l = 0.0;
    for (var kb = 0u; kb < len; kb += WG) {
        let jn = min(WG, len - kb);
        var s = NEG_BIG;
        if (li < jn) {
            let base = (kb + li) * kv_stride + kh * HD;
            var d = 0.0;
            for (var c = 0u; c < HD; c++) { d = fma(qs[c], k[base + c], d); }
            s = d;
        }
        w[li] = s;
        workgroupBarrier();
        var bm = m;
        for (var t = 0u; t < jn; t++) { bm = max(bm, w[t]); }
        workgroupBarrier();
        w[li] = exp(s - bm);
        workgroupBarrier();
        let corr = exp(m - bm);
        var sum = 0.0;
        for (var t = 0u; t < jn; t++) { sum += w[t]; }
        l = l * corr + sum;
        for (var a = 0u; a < ACC; a++) {
            let c = li + a * WG;
            if (c < HD) {
                var x = acc[a] * corr;
                for (var t = 0u; t < jn; t++) {
                    x = fma(w[t], v[(kb + t) * kv_stride + kh * HD + c], x);
                }
                acc[a] = x;
            }
        }
        m = bm;
        workgroupBarrier();
    }
    let inv = 1.0 / l;
    for (var a = 0u; a < ACC; a++) {
        let c = li + a * WG;
        if (c < HD) { o[i * q_stride + h * HD + c] = acc[a] * inv; }
    }
}
