// The contributor's Web Worker: keeps the identity seed in IndexedDB (so credits follow the
// contributor across visits), loads the wasm client (tessera-client-wasm.js and its _bg.wasm, built by
// scripts/build-web or `trunk serve`) and runs it; the client posts JSON reports to the page.
/* global wasm_bindgen, importScripts */
importScripts('tessera-client-wasm.js');

function identitySeed() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open('tessera', 1);
    open.onupgradeneeded = () => open.result.createObjectStore('identity');
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const get = db.transaction('identity').objectStore('identity').get('seed');
      get.onerror = () => reject(get.error);
      get.onsuccess = () => {
        if (get.result) return resolve(new Uint8Array(get.result));
        const seed = crypto.getRandomValues(new Uint8Array(32));
        const put = db.transaction('identity', 'readwrite').objectStore('identity').put(seed, 'seed');
        put.onerror = () => reject(put.error);
        put.onsuccess = () => resolve(seed);
      };
    };
  });
}

let started = false;
let loaded = false;
self.onmessage = async (e) => {
  const m = e.data;
  if (m.cmd === 'start') {
    if (started) {
      wasm_bindgen.resume();
      return;
    }
    started = true;
    try {
      if (!loaded) {
        await wasm_bindgen('tessera-client-wasm_bg.wasm');
        loaded = true;
      }
      const seed = await identitySeed();
      await wasm_bindgen.run(m.url, seed, m.budget, m.share, m.tuned || undefined);
    } catch (err) {
      // Start may try again (a refused identity stays refused, but the page says why).
      started = false;
      self.postMessage(JSON.stringify({ type: 'fatal', text: String(err && err.message || err) }));
    }
  } else if (m.cmd === 'pause') {
    wasm_bindgen.pause();
  } else if (m.cmd === 'share') {
    wasm_bindgen.set_gpu_share(m.value);
  } else if (m.cmd === 'lose-device') {
    wasm_bindgen.lose_device();
  }
};
