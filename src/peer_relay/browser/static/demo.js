// The demo page: join the network this page came from, list links, send and receive messages.
import { PeerRelay, loadRuntime } from './peer-relay.js'

const $ = (id) => document.getElementById(id)
const started = performance.now()
const config = await (await fetch('config.json')).json()
const peer = new PeerRelay({ bootstrap: config.bootstrap || [] })
window.peer = peer

function renderPeers () {
  const list = peer.peers
  $('peer-count').textContent = list.length
  $('peers').replaceChildren(...(list.length ? list.map(({ id, transport }) => {
    const li = document.createElement('li')
    li.innerHTML = `<span class="id"></span><span class="tag ${transport}">${transport}</span>`
    li.firstChild.textContent = id
    const use = document.createElement('button')
    use.className = 'small'
    use.textContent = 'send to'
    use.onclick = () => { $('to').value = id; $('text').focus() }
    li.append(use)
    return li
  }) : [Object.assign(document.createElement('li'), { innerHTML: '<em>none yet</em>' })]))
}

let received = 0
peer.on('message', (data, from, info) => {
  if (received++ === 0) $('messages').replaceChildren()
  const li = document.createElement('li')
  const text = typeof data === 'string' ? data : JSON.stringify(data)
  li.innerHTML = '<span class="id"></span>: <b></b> <span></span>'
  li.children[0].textContent = from.slice(0, 12) + '…'
  li.children[1].textContent = text
  li.children[2].textContent = info.verified ? `✔ signed, ${info.hops} hop(s)` : '✘ unverified'
  li.children[2].className = info.verified ? 'ok' : 'bad'
  $('messages').prepend(li)
})
peer.on('peer', renderPeers)
peer.on('peer-closed', renderPeers)
peer.on('error', (err) => { $('status').textContent = `Failed: ${err}` })

await peer.ready
const loadMs = performance.now() - started
window.peerLoadMs = loadMs
$('my-id').textContent = peer.id
$('status').textContent = `Ready in ${(loadMs / 1000).toFixed(1)} s (Pyodide ${(await loadRuntime()).version}). ` +
  `Bootstrap: ${(config.bootstrap || []).join(', ') || 'none'}`
renderPeers()

$('send-form').onsubmit = (event) => {
  event.preventDefault()
  try {
    peer.send($('to').value.trim(), $('text').value)
    $('send-status').textContent = `sent to ${$('to').value.trim().slice(0, 12)}…`
    $('text').value = ''
  } catch (err) {
    $('send-status').textContent = `${err}`
  }
}
$('connect').onclick = async () => {
  $('send-status').textContent = 'linking …'
  try {
    await peer.connect($('to').value.trim())
    $('send-status').textContent = 'linked'
  } catch (err) {
    $('send-status').textContent = `${err}`
  }
}
