// peer-relay for the browser: the Python package, run by Pyodide, as a full peer of the network.
//
//   import { PeerRelay, DeliveryError, RemoteError } from './peer-relay.js'
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
//
// End-to-end encrypted sessions (Noise IK) carry send(), and, as the Python API's:
//
//   await peer.deliver(id, data, { timeout: 10 })   // resolves once the receipt is back,
//                                                   // else rejects with a DeliveryError
//   const reply = await peer.request(id, data, { timeout: 10 })   // RemoteError, DeliveryError
//   peer.on('request', async (data, from, info) => reply)  // the last one set answers; what
//                                                  // it throws is the caller's RemoteError
//
// Timeouts are in seconds. Data is any JSON value. A bad id, data or timeout makes the call throw
// at once the error the Python API raises for the same (its Python counterpart), with the same
// one-line message: a TypeError, or a ValueError or RuntimeError (exported here; `err.name` is
// Python's). What JSON cannot carry unchanged is refused rather than sent changed: NaN and the
// infinities, undefined, functions, symbols, BigInt, Map, Set, typed arrays, cycles, lone
// surrogates, nesting past the Python API's limit. Object members that are undefined (or
// functions or symbols) are left out and toJSON() is honoured, as JSON.stringify does; send(id)
// with no data sends null. A call made before `ready` waits for it: deliver() and request()
// return a Promise that rejects with the error, send() emits it as an 'error' event.

const BASE = new URL('.', import.meta.url)
// Where the build put Pyodide and our package: build.py writes their versioned names here.
const FILES = { pyodide: 'pyodide/', bundle: 'peer_relay.zip' }
let runtime = null
let takeError = null // peer_relay.browser.peer.take_error, once the runtime is loaded

/** Load Pyodide and the peer_relay package once per page; resolves to the Pyodide instance. */
export function loadRuntime (base = BASE) {
  if (runtime === null) {
    runtime = (async () => {
      const t0 = performance.now()
      const indexURL = new URL(FILES.pyodide, base).href
      const { loadPyodide } = await import(new URL('pyodide.mjs', indexURL).href)
      const pyodide = await loadPyodide({ indexURL })
      const bundle = await fetch(new URL(FILES.bundle, base))
      if (!bundle.ok) throw new Error(`${FILES.bundle}: HTTP ${bundle.status}`)
      pyodide.unpackArchive(await bundle.arrayBuffer(), 'zip', { extractDir: '/home/pyodide/pkg' })
      pyodide.runPython(
        "import sys\nsys.path.insert(0, '/home/pyodide/pkg')\nimport peer_relay.browser"
      )
      takeError = pyodide.pyimport('peer_relay.browser.peer').take_error
      runtime.loadMs = performance.now() - t0
      return pyodide
    })()
  }
  return runtime
}

/** A delivery or request that got no receipt or reply in time; `reason` says why. */
export class DeliveryError extends Error {
  constructor (message, reason = message) {
    super(message)
    this.name = 'DeliveryError'
    this.reason = reason
  }
}

/** The remote request handler failed; the message is the one it threw. */
export class RemoteError extends Error {
  constructor (message) {
    super(message)
    this.name = 'RemoteError'
  }
}

/** Python's ValueError: a bad id, data or timeout (`err.name` 'ValueError'). */
export class ValueError extends Error {
  constructor (message) {
    super(message)
    this.name = 'ValueError'
  }
}

/** Python's RuntimeError: a call to a peer that was destroyed, say. */
export class RuntimeError extends Error {
  constructor (message) {
    super(message)
    this.name = 'RuntimeError'
  }
}

/** The JavaScript error for a Python exception: TypeError as itself, ValueError and
 *  RuntimeError as the classes above, others as an Error named as Python names them. */
function pythonLike (type, message) {
  if (type === 'TypeError') return new TypeError(message)
  if (type === 'ValueError') return new ValueError(message)
  if (type === 'RuntimeError') return new RuntimeError(message)
  const err = new Error(message)
  err.name = type
  return err
}

/** A Python exception raised through Pyodide as itself: its type and one-line message, which
 *  Python kept for us (take_error), not the traceback Pyodide puts in the message. Anything
 *  else is returned as it is. */
function fromPython (err) {
  if (!err || err.constructor?.name !== 'PythonError' || typeof err.type !== 'string') return err
  const kept = takeError && takeError()
  if (kept) {
    const [type, message] = JSON.parse(kept)
    if (type === err.type) return pythonLike(type, message)
  }
  // Raised before our code ran (Pyodide's own checks): the last line of the traceback.
  const text = String(err.message).trimEnd()
  const at = text.lastIndexOf(`\n${err.type}: `)
  return pythonLike(err.type, at >= 0 ? text.slice(at + err.type.length + 3) : text.split('\n').pop())
}

function callPython (fn) {
  try {
    return fn()
  } catch (err) {
    throw fromPython(err)
  }
}

const MARK = JSON.stringify('\u0000js')
const MAX_DEPTH = 512

/** The name of an object JSON.stringify would change (a Map becomes {}), else null. */
function changedByJson (v) {
  const changed = v instanceof Map || v instanceof Set || v instanceof WeakMap ||
    v instanceof WeakSet || v instanceof ArrayBuffer || ArrayBuffer.isView(v) ||
    v instanceof Promise || v instanceof RegExp
  return changed ? (v.constructor?.name || 'object') : null
}

/**
 * `value` as JSON text for Python, where the core's checks judge it as they judge its Python
 * counterpart. JSON.stringify would change some values silently: NaN and the infinities are
 * written as Python reads them (so Python refuses them itself), and what Python has no
 * counterpart of (undefined, functions, symbols, BigInt, a Map, ...) or a reference back to an
 * enclosing array or object is written as a marked object ({"\u0000js": [kind]}, which Python
 * takes for a value of that kind, or for the cycle). Nesting deeper than MAX_DEPTH is cut there
 * (Python refuses it for its depth). Members that are undefined, functions or symbols are left
 * out, and toJSON() is honoured, as JSON.stringify does.
 */
function jsonText (value) {
  const out = []
  const open = new Map() // the arrays and objects being written -> their depth
  const mark = (...kind) => out.push(`{${MARK}:${JSON.stringify(kind)}}`)
  const absent = (v) => v === undefined || typeof v === 'function' || typeof v === 'symbol'
  const prepare = (v, key) => {
    if (v !== null && typeof v === 'object') {
      if (typeof v.toJSON === 'function') v = v.toJSON(key)
      if (v instanceof Number || v instanceof String || v instanceof Boolean) v = v.valueOf()
    }
    return v
  }
  const write = (v, depth) => {
    switch (typeof v) {
      case 'string': out.push(JSON.stringify(v)); return
      case 'boolean': out.push(v ? 'true' : 'false'); return
      case 'number': out.push(Number.isFinite(v) ? JSON.stringify(v) : String(v)); return
      case 'object': if (v === null) { out.push('null'); return } break
      default: mark(typeof v); return // undefined, function, symbol, bigint
    }
    const changed = changedByJson(v)
    if (changed) { mark(changed); return }
    if (open.has(v)) { mark('cycle', depth - open.get(v)); return }
    if (depth >= MAX_DEPTH) { out.push('null'); return }
    open.set(v, depth)
    if (Array.isArray(v)) {
      out.push('[')
      for (let i = 0; i < v.length; i++) {
        if (i) out.push(',')
        write(prepare(v[i], String(i)), depth + 1)
      }
      out.push(']')
    } else {
      out.push('{')
      let first = true
      for (const key of Object.keys(v)) {
        const item = prepare(v[key], key)
        if (absent(item)) continue
        if (!first) out.push(',')
        first = false
        out.push(JSON.stringify(key), ':')
        write(item, depth + 1)
      }
      out.push('}')
    }
    open.delete(v)
  }
  write(prepare(value, ''), 0)
  return out.join('')
}

function errorText (err) {
  if (err instanceof Error) return err.message || err.name
  return String(err)
}

export class PeerRelay {
  constructor (opts = {}) {
    this.id = null
    this.destroyed = false
    this._listeners = new Map()
    this._connects = new Map()
    this._waiting = new Map() // token (decimal text) -> { resolve, reject }
    this._early = new Map() // outcomes that came before their call returned its token
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
    // TURN credentials (a JS null would reach Python as jsnull, not None: leave them out).
    if (opts.iceUsername != null) kwargs.ice_username = opts.iceUsername
    if (opts.iceCredential != null) kwargs.ice_credential = opts.iceCredential
    // Any other limit or policy of the core's Config, by its Python name (refresh_interval, ...).
    for (const [name, value] of Object.entries(opts.options || {})) kwargs[name] = value
    this._py = callPython(() => BrowserPeer.callKwargs(kwargs))
    BrowserPeer.destroy()
    this.id = this._py.id_hex
    callPython(() => this._py.start())
    this._fire('ready', this.id)
    return this
  }

  _fromPython (name, argsJson) {
    const args = JSON.parse(argsJson)
    switch (name) {
      case 'connect': {
        const [id, ok, reason] = args
        const waiters = this._connects.get(id) || []
        this._connects.delete(id)
        for (const w of waiters) ok ? w.resolve() : w.reject(new Error(`connect failed: ${reason}`))
        return
      }
      case 'delivery': {
        const [token, ok, reason] = args
        const err = ok ? null : new DeliveryError(`not delivered: ${reason}`, reason)
        this._settle(token, ok, undefined, err)
        return
      }
      case 'reply': {
        const [token, ok, value, error, remote] = args
        const err = ok
          ? null
          : remote ? new RemoteError(error) : new DeliveryError(`no reply: ${error}`, error)
        this._settle(token, ok, value, err)
        return
      }
      case 'request': {
        // Answered on a later turn: the handler never runs inside the Python call that got it.
        const [token, data, from, hops] = args
        queueMicrotask(() => this._answer(token, data, from, { hops }))
        return
      }
    }
    this._fire(name, ...args)
  }

  _settle (token, ok, value, error) {
    const waiter = this._waiting.get(token)
    if (!waiter) {
      this._early.set(token, { ok, value, error })
      return
    }
    this._waiting.delete(token)
    ok ? waiter.resolve(value) : waiter.reject(error)
  }

  async _answer (token, data, from, info) {
    const handlers = this._listeners.get('request') || []
    const handler = handlers[handlers.length - 1]
    let value = null
    let error = handler ? null : `no request handler at ${this.id.slice(0, 8)}`
    if (handler) {
      try {
        value = await handler(data, from, info)
      } catch (err) {
        error = errorText(err)
      }
    }
    let text = 'null'
    if (error === null) {
      try {
        text = jsonText(value === undefined ? null : value)
      } catch (err) {
        error = `the handler's reply cannot be sent: ${err.message}`
      }
    }
    try {
      // (JavaScript's null reaches Python as JsNull, not None: no error is no argument.)
      const args = error === null ? [token, text] : [token, text, error]
      if (this._py) callPython(() => this._py.respond(...args))
    } catch (err) {
      console.error('peer-relay: a reply could not be sent', err)
    }
  }

  /** Start a delivery or request in Python; a Promise of its outcome. */
  _session (method, id, data, opts) {
    if (opts !== undefined && (opts === null || typeof opts !== 'object')) {
      throw new TypeError(`the options are an object such as { timeout: 10 }, not ${opts}`)
    }
    return this._begin(method, id, jsonText(data), opts?.timeout ?? 10)
  }

  _begin (method, id, text, timeout) {
    if (!this._py) {
      if (this.destroyed) throw new RuntimeError('this peer has been destroyed')
      return this.ready.then(() => this._begin(method, id, text, timeout))
    }
    const token = callPython(() => this._py[method](id, text, timeout))
    const early = this._early.get(token)
    this._early.clear()
    if (early) return early.ok ? Promise.resolve(early.value) : Promise.reject(early.error)
    return new Promise((resolve, reject) => this._waiting.set(token, { resolve, reject }))
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
    const wrapper = (...args) => { this.off(name, wrapper); return fn(...args) } // (a reply)
    return this.on(name, wrapper)
  }

  /** Send `data` (any JSON value) to the peer `id`. */
  send (id, data) {
    const text = jsonText(data === undefined ? null : data)
    if (this._py) {
      callPython(() => this._py.send(id, text))
    } else if (this.destroyed) {
      throw new RuntimeError('this peer has been destroyed')
    } else {
      this.ready
        .then(() => this._py && callPython(() => this._py.send(id, text)))
        .catch((err) => this._fire('error', err))
    }
  }

  /** Send `data` to `id` end to end encrypted; resolves once `id` confirmed its receipt,
   *  rejects with a DeliveryError when no receipt came within `timeout` seconds (default 10). */
  deliver (id, data, opts) {
    return this._session('deliver', id, data, opts)
  }

  /** Send `data` to the request handler of `id`; resolves to its reply, rejects with a
   *  RemoteError (the handler failed) or a DeliveryError (no reply within `timeout` seconds). */
  request (id, data, opts) {
    return this._session('request', id, data, opts)
  }

  /** Form a direct link to `id` (WebRTC, or WebSocket if it listens); resolves once open. */
  async connect (id, cb) {
    await this.ready
    if (!this._py) throw new RuntimeError('this peer has been destroyed')
    const to = callPython(() => this._py.hex_of(id))
    let waiter
    const done = new Promise((resolve, reject) => { waiter = { resolve, reject } })
    if (!this._connects.has(to)) this._connects.set(to, [])
    this._connects.get(to).push(waiter)
    try {
      callPython(() => this._py.connect(to))
    } catch (err) {
      const left = (this._connects.get(to) || []).filter((w) => w !== waiter)
      left.length ? this._connects.set(to, left) : this._connects.delete(to)
      throw err
    }
    if (cb) done.then(() => cb(null), cb)
    return done
  }

  disconnect (id) {
    return this._py ? callPython(() => this._py.disconnect(id)) : false
  }

  /** `[{id, transport}]` of the open direct links. */
  get peers () {
    return this._py ? JSON.parse(callPython(() => this._py.peers_json())) : []
  }

  get stats () {
    return this._py ? JSON.parse(callPython(() => this._py.stats_json())) : {}
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
      const gone = new DeliveryError('this peer was destroyed before an answer came')
      for (const waiter of this._waiting.values()) waiter.reject(gone)
      this._waiting.clear()
    }
    if (cb) setTimeout(cb, 0)
  }
}

if (typeof window !== 'undefined') window.PeerRelay = PeerRelay
export default PeerRelay
