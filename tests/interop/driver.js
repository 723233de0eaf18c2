'use strict'
// Test driver: ONE Node process hosting many peers of the original npm package
// peer-relay@0.0.2, controlled by JSON lines on stdin and reporting JSON lines on stdout.
//
// Requests:  {"req": N, "cmd": "...", ...}   ->  reply {"req": N, "ok": true, ...}
//                                                   or {"req": N, "ok": false, "error": "..."}
// Events:    {"event": "ready" | "peer" | "peer_removed" | "message" | "socket_message" |
//             "socket_listening" | "frame" | "crash", ...}
//
// stdout carries nothing but these JSON lines; 0.0.2's debug output and Node warnings go to
// stderr. Any uncaughtException / unhandledRejection (i.e. 0.0.2 crashing) is reported as a
// "crash" event and the process exits with code 1. A malformed command only gets an error
// reply; it never takes the driver down.
//
// Node resolves "localhost" with the system resolver in "verbatim" order; where /etc/hosts
// lists ::1 first, a 0.0.2 client given ws://localhost:PORT would try ::1 while Python servers
// bind 127.0.0.1. 0.0.2 hard-codes "localhost" in the URL it advertises, so the driver asks
// Node for IPv4 first (dns.setDefaultResultOrder) and keeps Node 20's autoSelectFamily on.
// Tests should still give 0.0.2 bootstrap URLs with 127.0.0.1.
//
// 0.0.2 (through ws 1.1.5) listens without a host, i.e. on every interface. For tests the
// driver pins such servers to 127.0.0.1; the URL 0.0.2 advertises is unchanged.

const dns = require('dns')
const http = require('http')
const net = require('net')
const readline = require('readline')

if (typeof dns.setDefaultResultOrder === 'function') dns.setDefaultResultOrder('ipv4first')
if (typeof net.setDefaultAutoSelectFamily === 'function') net.setDefaultAutoSelectFamily(true)

const originalListen = http.Server.prototype.listen
http.Server.prototype.listen = function (port, host) {
  if (typeof port === 'number' && host == null) {
    const args = Array.prototype.slice.call(arguments)
    args[1] = '127.0.0.1'
    return originalListen.apply(this, args)
  }
  return originalListen.apply(this, arguments)
}

let exiting = false

function emit (obj) {
  let line
  try {
    line = JSON.stringify(obj)
  } catch (err) {
    line = JSON.stringify({ event: 'driver_error', error: 'unserialisable output: ' + err })
  }
  process.stdout.write(line + '\n')
}

function crash (kind, err) {
  if (exiting) return
  exiting = true
  const error = err && err.message !== undefined ? String(err.message) : String(err)
  const stack = err && err.stack ? String(err.stack) : null
  try {
    emit({ event: 'crash', kind: kind, error: error, stack: stack })
  } catch (_) {}
  // Pipes are synchronous on Linux, but be safe: exit once stdout has drained.
  process.stdout.write('', () => process.exit(1))
  setTimeout(() => process.exit(1), 500).unref()
}

process.on('uncaughtException', (err) => crash('uncaughtException', err))
process.on('unhandledRejection', (err) => crash('unhandledRejection', err))

const PeerRelay = require('peer-relay')
const Socket = PeerRelay.Socket
let wrtcModule = null

function getWrtc () {
  if (wrtcModule == null) wrtcModule = require('@roamhq/wrtc')
  return wrtcModule
}

// name -> { kind: 'client' | 'socket', client, socket, trace }
const nodes = new Map()

class CommandError extends Error {}

function need (cond, msg) {
  if (!cond) throw new CommandError(msg)
}

function getNode (cmd) {
  need(typeof cmd.name === 'string', 'missing "name" (string)')
  const node = nodes.get(cmd.name)
  need(node != null, 'no peer named ' + JSON.stringify(cmd.name))
  return node
}

function getClient (cmd) {
  const node = getNode(cmd)
  need(!node.client.destroyed, 'peer ' + JSON.stringify(cmd.name) + ' is destroyed')
  return node.client
}

function getSocket (cmd) {
  const node = getNode(cmd)
  need(node.kind === 'socket', 'peer ' + JSON.stringify(cmd.name) + ' is not a Socket')
  return node
}

function parseId (value, field) {
  need(typeof value === 'string' && /^[0-9a-fA-F]{40}$/.test(value),
    '"' + field + '" must be a 40-hex-digit id')
  return Buffer.from(value, 'hex')
}

function hexOf (id) {
  if (Buffer.isBuffer(id)) return id.toString('hex')
  if (typeof id === 'string') return id
  return String(id)
}

function parseOpts (cmd) {
  const port = cmd.port === undefined ? 0 : cmd.port
  need(port === null || (Number.isInteger(port) && port >= 0 && port < 65536),
    '"port" must be an integer 0..65535 or null')
  const bootstrap = cmd.bootstrap == null ? [] : cmd.bootstrap
  need(Array.isArray(bootstrap) && bootstrap.every((u) => typeof u === 'string'),
    '"bootstrap" must be a list of URL strings')
  const opts = { bootstrap: bootstrap }
  if (port !== null) opts.port = port
  if (cmd.wrtc) opts.wrtc = getWrtc()
  return opts
}

function channelKind (channel) {
  if (channel && channel.ws !== undefined) return 'ws'
  if (channel && channel._sp !== undefined) return 'wrtc'
  return 'unknown'
}

// Optional tracing of every frame a peer sends or receives on its links, as the exact string.
function installTrace (name, client) {
  function record (dir, channel, frame) {
    emit({
      event: 'frame',
      name: name,
      dir: dir,
      peer: channel.id ? hexOf(channel.id) : null,
      transport: channelKind(channel),
      frame: typeof frame === 'string' ? frame : String(frame)
    })
  }
  function onConnection (channel) {
    const origSend = channel.send
    channel.send = function (data) {
      if (!this.destroyed) record('out', channel, JSON.stringify(data))
      return origSend.apply(this, arguments)
    }
    if (channel.ws) {
      const origOnMessage = channel.ws.onmessage
      channel.ws.onmessage = function (ev) {
        record('in', channel, ev.data)
        return origOnMessage.apply(this, arguments)
      }
    } else if (channel._sp) {
      channel._sp.prependListener('data', (data) => record('in', channel, data.toString()))
    }
  }
  client.wsConnector.prependListener('connection', onConnection)
  client.wrtcConnector.prependListener('connection', onConnection)
}

function wirePeerEvents (name, client) {
  client.on('peer', (id) => emit({ event: 'peer', name: name, id: hexOf(id) }))
  client.peers.on('removed', (channel) => {
    emit({ event: 'peer_removed', name: name, id: hexOf(channel.id) })
  })
  client.on('message', (data, from) => {
    emit({ event: 'message', name: name, data: data === undefined ? null : data, from: hexOf(from) })
  })
}

// Replies once the WebSocket server listens (0.0.2 sets wsConnector.url on 'listening').
function whenListening (client, cb) {
  const wss = client.wsConnector._wss
  if (wss == null) return cb(null)
  let done = false
  function finish (err) {
    if (done) return
    done = true
    cb(err)
  }
  // 0.0.2 attaches no 'error' listener to its server: keep ours so a listen error is reported
  // to the test instead of becoming an uncaught exception.
  wss.on('error', (err) => finish(err))
  if (wss._server && wss._server.listening) return finish(null)
  wss.once('listening', () => finish(null))
}

function describe (node) {
  const client = node.client
  const wss = client.wsConnector._wss
  let port = null
  if (wss && wss._server && wss._server.address()) port = wss._server.address().port
  const out = {
    id: client.id.toString('hex'),
    url: client.wsConnector.url,
    port: port,
    url_ipv4: port != null ? 'ws://127.0.0.1:' + port : null
  }
  if (node.kind === 'socket') {
    out.dgram_port = node.socket._port
  }
  return out
}

function createCommon (cmd, kind, reply) {
  need(typeof cmd.name === 'string' && cmd.name.length > 0, 'missing "name" (string)')
  need(!nodes.has(cmd.name), 'a peer named ' + JSON.stringify(cmd.name) + ' exists already')
  const opts = parseOpts(cmd)
  const node = { kind: kind, client: null, socket: null }
  if (kind === 'socket') {
    node.socket = new Socket(opts)
    node.client = node.socket.peer
    node.socket.on('message', (buf, rinfo) => {
      emit({
        event: 'socket_message',
        name: cmd.name,
        buffer_b64: Buffer.from(buf).toString('base64'),
        rinfo: rinfo
      })
    })
    node.socket.on('error', (err) => emit({ event: 'socket_error', name: cmd.name, error: String(err) }))
  } else {
    node.client = new PeerRelay(opts)
  }
  nodes.set(cmd.name, node)
  if (cmd.trace) installTrace(cmd.name, node.client)
  wirePeerEvents(cmd.name, node.client)
  whenListening(node.client, (err) => {
    if (err) return reply({ ok: false, error: 'listen failed: ' + err.message })
    reply(Object.assign({ ok: true }, describe(node)))
  })
}

function destroyNode (node, cb) {
  const client = node.client
  if (client.destroyed) return cb()
  // Always pass a callback: 0.0.2's WsConnector.destroy calls cb() unconditionally when the
  // peer has no server, so Client#destroy() without one throws "cb is not a function" (and
  // Socket#close, which calls it that way, throws for every port-less Socket).
  client.destroy(() => cb())
  if (node.kind === 'socket' && node.socket.peer) node.socket.close()
}

const handlers = {
  ping (cmd, reply) {
    reply({ ok: true, pid: process.pid, node: process.version })
  },

  create (cmd, reply) {
    createCommon(cmd, 'client', reply)
  },

  socket_create (cmd, reply) {
    createCommon(cmd, 'socket', reply)
  },

  info (cmd, reply) {
    reply(Object.assign({ ok: true }, describe(getNode(cmd))))
  },

  send (cmd, reply) {
    const client = getClient(cmd)
    const to = parseId(cmd.to, 'to')
    need('data' in cmd, 'missing "data"')
    client.send(to, cmd.data)
    reply({ ok: true })
  },

  connect (cmd, reply) {
    const client = getClient(cmd)
    client.connect(parseId(cmd.to, 'to'))
    reply({ ok: true })
  },

  disconnect (cmd, reply) {
    const client = getClient(cmd)
    client.disconnect(parseId(cmd.to, 'to'))
    reply({ ok: true })
  },

  peers (cmd, reply) {
    const client = getNode(cmd).client
    const channels = client.destroyed ? [] : client.peers.toArray()
    reply({
      ok: true,
      peers: channels.map((c) => hexOf(c.id)),
      transports: channels.map((c) => channelKind(c))
    })
  },

  destroy (cmd, reply) {
    const node = getNode(cmd)
    destroyNode(node, () => {})
    reply({ ok: true })
  },

  socket_bind (cmd, reply) {
    const node = getSocket(cmd)
    need(node.socket.peer != null, 'socket is closed')
    const port = cmd.port == null ? undefined : cmd.port
    need(port === undefined || (Number.isInteger(port) && port > 0), '"port" must be a positive integer or null')
    // 0.0.2 only reports 'listening' once the socket's peer has a first direct peer.
    node.socket.bind(port, () => {
      const address = node.socket.peer ? node.socket.address() : null
      emit({ event: 'socket_listening', name: cmd.name, address: address })
    })
    reply({ ok: true, dgram_port: node.socket._port })
  },

  socket_address (cmd, reply) {
    const node = getSocket(cmd)
    need(node.socket.peer != null, 'socket is closed')
    reply({ ok: true, address: node.socket.address() })
  },

  socket_send (cmd, reply) {
    const node = getSocket(cmd)
    need(node.socket.peer != null, 'socket is closed')
    need(typeof cmd.buffer_b64 === 'string', 'missing "buffer_b64" (string)')
    need(typeof cmd.to === 'string', 'missing "to" (address string: hex id, localhost or 127.0.0.1)')
    need(Number.isInteger(cmd.port), 'missing "port" (integer)')
    const buf = Buffer.from(cmd.buffer_b64, 'base64')
    const offset = cmd.offset == null ? 0 : cmd.offset
    const length = cmd.length == null ? buf.length : cmd.length
    need(Number.isInteger(offset) && Number.isInteger(length), '"offset"/"length" must be integers')
    // Passed through unchanged: 0.0.2 slices buffer.slice(offset, length) (sic).
    node.socket.send(buf, offset, length, cmd.port, cmd.to)
    reply({ ok: true })
  },

  socket_close (cmd, reply) {
    const node = getSocket(cmd)
    destroyNode(node, () => {})
    reply({ ok: true })
  },

  shutdown (cmd, reply) {
    let pending = nodes.size
    const finish = () => {
      reply({ ok: true })
      exiting = true
      process.stdout.write('', () => process.exit(0))
      setTimeout(() => process.exit(0), 500).unref()
    }
    if (pending === 0) return finish()
    const timer = setTimeout(finish, 2000)
    for (const node of nodes.values()) {
      destroyNode(node, () => {
        if (--pending === 0) {
          clearTimeout(timer)
          finish()
        }
      })
    }
  }
}

function handleLine (line) {
  if (line.trim() === '') return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    emit({ req: null, ok: false, error: 'malformed JSON: ' + err.message })
    return
  }
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
    emit({ req: null, ok: false, error: 'a command must be a JSON object' })
    return
  }
  const req = cmd.req === undefined ? null : cmd.req
  let replied = false
  const reply = (obj) => {
    if (replied) return
    replied = true
    emit(Object.assign({ req: req }, obj))
  }
  const handler = typeof cmd.cmd === 'string' && Object.prototype.hasOwnProperty.call(handlers, cmd.cmd)
    ? handlers[cmd.cmd]
    : null
  if (handler == null) {
    reply({ ok: false, error: 'unknown cmd ' + JSON.stringify(cmd.cmd) })
    return
  }
  try {
    handler(cmd, reply)
  } catch (err) {
    // A synchronous throw from our validation or from 0.0.2 itself (e.g. "WebSocket is not
    // ready"): report it to the caller; the driver stays up.
    const isOurs = err instanceof CommandError
    reply({
      ok: false,
      error: (isOurs ? '' : 'peer-relay threw: ') + (err && err.message ? err.message : String(err)),
      stack: isOurs ? undefined : (err && err.stack ? String(err.stack) : undefined)
    })
  }
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', handleLine)
rl.on('close', () => {
  // stdin closed: the controlling test is gone.
  exiting = true
  process.exit(0)
})

emit({ event: 'ready', pid: process.pid, node: process.version })
