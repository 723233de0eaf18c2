// peer-relay for the browser: the Python package, run by Pyodide, as a full peer of the network.
//
//   import { PeerRelay } from './peer-relay.js'
//   const peer = new PeerRelay({ bootstrap: ['ws://127.0.0.1:8001'] })
//   peer.on('ready', (id) => ...)              // id: 40 hex digits; also peer.id once ready
//   peer.on('message', (data, from, info) => ...)   // info: { verified, hops }
//   peer.on('peer', (id, transport) => ...)    // 'ws' or 'webrtc'
//   peer.on('peer-closed', (id, reason) => ...)
//   peer.send(id, data); await peer.connect(id); peer.disconnect(id); peer.destroy()
//
// The same API as the original (new PeerRelay({bootstrap}), id, connect, disconnect, send,
// destroy, on('message'), on('peer')), except that Python loads asynchronously: `peer.id` is set
// once `peer.ready` resolves, and calls made before then are queued. Ids are hex strings (a
// Uint8Array is accepted too). Everything loads from the folder this file is served from: no CDN.

const BASE = new URL('.', import.meta.url)
let runtime = null

/** Load Pyodide and the peer_relay package once per page; resolves to the Pyodide instance. */
export function loadRuntime (base = BASE) {
  if (runtime === null) {
    runtime = (async () => {
      const t0 = performance.now()
      const { loadPyodide } = await import(new URL('pyodide/pyodide.mjs', base).href)
      const pyodide = await loadPyodide({ indexURL: new URL('pyodide/', base).href })
      const bundle = await fetch(new URL('peer_relay.zip', base))
      if (!bundle.ok) throw new Error(`peer_relay.zip: HTTP ${bundle.status}`)
      pyodide.unpackArchive(await bundle.arrayBuffer(), 'zip', { extractDir: '/home/pyodide/pkg' })
      pyodide.runPython(
        "import sys\nsys.path.insert(0, '/home/pyodide/pkg')\nimport peer_relay.browser"
      )
      runtime.loadMs = performance.now() - t0
      return pyodide
    })()
  }
  return runtime
}

function hexId (id) {
  if (typeof id === 'string') return id.toLowerCase()
  if (id instanceof Uint8Array) return Array.from(id, (b) => b.toString(16).padStart(2, '0')).join('')
  if (id && id.type === 'Buffer' && Array.isArray(id.data)) return hexId(Uint8Array.from(id.data))
  throw new TypeError('a peer id is 40 hex digits or 20 bytes')
}

export class PeerRelay {
  constructor (opts = {}) {
    this.id = null
    this.destroyed = false
    this._listeners = new Map()
    this._connects = new Map()
    this._py = null
    this.ready = this._start(opts)
    this.ready.catch((err) => this._fire('error', err))
  }

  async _start (opts) {
    const pyodide = await loadRuntime(opts.base ? new URL(opts.base, location.href) : BASE)
    if (this.destroyed) throw new Error('destroyed before it started')
    const { BrowserPeer } = pyodide.pyimport('peer_relay.browser')
    const kwargs = {
      emit: (name, args) => this._fromPython(name, args),
      bootstrap: pyodide.toPy(opts.bootstrap || []),
      webrtc: opts.webrtc !== false,
      ice_servers: pyodide.toPy(opts.iceServers || []),
      allow_unsigned: !!opts.allowUnsigned
    }
    if (opts.maxLinks) kwargs.max_links = opts.maxLinks
    // Any other limit or policy of the core's Config, by its Python name (refresh_interval, ...).
    for (const [name, value] of Object.entries(opts.options || {})) kwargs[name] = value
    this._py = BrowserPeer.callKwargs(kwargs)
    BrowserPeer.destroy()
    this.id = this._py.id_hex
    this._py.start()
    this._fire('ready', this.id)
    return this
  }

  _fromPython (name, argsJson) {
    const args = JSON.parse(argsJson)
    if (name === 'connect') {
      const [id, ok, reason] = args
      const waiters = this._connects.get(id) || []
      this._connects.delete(id)
      for (const w of waiters) ok ? w.resolve() : w.reject(new Error(`connect failed: ${reason}`))
      return
    }
    this._fire(name, ...args)
  }

  _fire (name, ...args) {
    for (const fn of [...(this._listeners.get(name) || [])]) {
      try { fn(...args) } catch (err) { console.error(`peer-relay ${name} listener`, err) }
    }
  }

  on (name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, [])
    this._listeners.get(name).push(fn)
    return this
  }

  off (name, fn) {
    const list = this._listeners.get(name) || []
    const i = list.indexOf(fn)
    if (i >= 0) list.splice(i, 1)
    return this
  }

  once (name, fn) {
    const wrapper = (...args) => { this.off(name, wrapper); fn(...args) }
    return this.on(name, wrapper)
  }

  /** Send `data` (any JSON value) to the peer `id`. */
  send (id, data) {
    const to = hexId(id)
    const text = JSON.stringify(data === undefined ? null : data)
    if (this._py) this._py.send(to, text)
    else if (!this.destroyed) this.ready.then(() => this._py && this._py.send(to, text))
  }

  /** Form a direct link to `id` (WebRTC, or WebSocket if it listens); resolves once open. */
  async connect (id, cb) {
    const to = hexId(id)
    await this.ready
    const done = new Promise((resolve, reject) => {
      if (!this._connects.has(to)) this._connects.set(to, [])
      this._connects.get(to).push({ resolve, reject })
    })
    this._py.connect(to)
    if (cb) done.then(() => cb(null), cb)
    return done
  }

  disconnect (id) {
    return this._py ? this._py.disconnect(hexId(id)) : false
  }

  /** `[{id, transport}]` of the open direct links. */
  get peers () {
    return this._py ? JSON.parse(this._py.peers_json()) : []
  }

  get stats () {
    return this._py ? JSON.parse(this._py.stats_json()) : {}
  }

  destroy (cb) {
    if (!this.destroyed) {
      this.destroyed = true
      if (this._py) {
        const py = this._py
        this._py = null
        py.close() // the Python peer's close(); then release the proxy itself
        py.destroy()
      }
    }
    if (cb) setTimeout(cb, 0)
  }
}

if (typeof window !== 'undefined') window.PeerRelay = PeerRelay
export default PeerRelay
