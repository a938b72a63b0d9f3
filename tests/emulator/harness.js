// harness.js — helpers for the emulator's own tests: a throwaway CA and server certificate
// (openssl), and the emulator started as a child process on a random port.
'use strict';

const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

// Creates WORK/{ca.pem, server.pem, server.key, client.pem, client.key}.
function makeCerts(work) {
  const sh = (args) => execFileSync('openssl', args, { cwd: work, stdio: ['ignore', 'ignore', 'pipe'] });
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  sh(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1',
    '-subj', '/CN=emu test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  sh(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(path.join(work, 'ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  sh(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem',
    '-days', '1', '-extfile', 'ext']);
  sh(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'client.key', '-out', 'client.pem', '-days', '1',
    '-subj', '/CN=client']);
}

// Starts kv-emulator.js with WORK/seed.json; resolves {port, origin, proc}.
function startEmulator(work, { quiet = true } = {}) {
  return new Promise((resolve, reject) => {
    const args = [path.join(__dirname, 'kv-emulator.js'), '--cert', 'server.pem', '--key', 'server.key',
      '--seed', 'seed.json', '--port', '0'];
    if (quiet) args.push('--quiet');
    const proc = spawn(process.execPath, args, { cwd: work, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /^(\d+)\n/.exec(out);
      if (m) resolve({ port: Number(m[1]), origin: `https://127.0.0.1:${m[1]}`, proc });
    });
    proc.on('exit', (c) => reject(new Error(`emulator exited with ${c}`)));
    setTimeout(() => reject(new Error('emulator did not print its port')), 15000).unref();
  });
}

module.exports = { makeCerts, startEmulator };
