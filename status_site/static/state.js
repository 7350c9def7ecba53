// What the page's sections share: the last answers, the polling bookkeeping, and a way to ask for a poll.

export const state = {
  capabilities: null,
  historyCursors: [null], // cursor of each page seen; the last entry is the current page
  historyNext: null,
  failures: 0,
  offlineSince: null,
  nextPollAt: 0,
  timer: null,
  again: false,
  lastOk: null,
  polling: false,
  lastCapabilitiesAt: 0,
};

export const $ = (id) => document.getElementById(id);

// The polling loop (poll.js) registers itself here, so a section can ask for fresh data without importing
// the loop that imports every section.
let requestPoll = () => {};

export function onPollRequest(handler) {
  requestPoll = handler;
}

export function pollSoon() {
  requestPoll();
}
