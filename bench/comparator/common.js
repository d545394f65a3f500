'use strict';
// Shared by the comparators: configuration from the environment, and the fixed answer of the two
// minimal ones (server-samework.js renders the service's own answer instead).
//
// The answer is a JSON document padded to BODY_BYTES, the size of zuplo-sts's cached response,
// so both sides put the same number of bytes on the wire.

function config() {
  const required = (name) => {
    const value = process.env[name];
    if (!value) {
      throw new Error(`${name} is required`);
    }
    return value;
  };
  return {
    port: Number(required('PORT')),
    jwksUrl: new URL(required('JWKS_URL')),
    issuer: required('ISSUER'),
    audience: required('AUDIENCE'),
    bodyBytes: Number(required('BODY_BYTES')),
    workers: Number(process.env.WORKERS || '2'),
  };
}

// A body of exactly `size` bytes carrying the verified subject, built per request like a real
// handler would (the subject differs per identity).
function answer(sub, size) {
  const head = JSON.stringify({ sub, verified: true, padding: '' });
  const pad = Math.max(0, size - Buffer.byteLength(head));
  return JSON.stringify({ sub, verified: true, padding: 'x'.repeat(pad) });
}

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';

module.exports = { config, answer, GRANT };
