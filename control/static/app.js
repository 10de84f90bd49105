// Partial updates: a form with data-partial="#id" is sent with fetch and only the element
// #id is replaced with what the server renders for it (the server sends the fragment
// when it sees X-Partial). Without JavaScript the same forms load whole pages.
document.addEventListener("submit", async (event) => {
  const form = event.target;
  const target = form.dataset && form.dataset.partial;
  if (!target) return;
  const into = document.querySelector(target);
  if (!into) return;
  event.preventDefault();
  const data = new FormData(form);
  const method = (form.getAttribute("method") || "get").toUpperCase();
  let url = form.getAttribute("action") || location.pathname;
  const init = { method, headers: { "X-Partial": "1" }, credentials: "same-origin" };
  if (method === "GET") {
    url += "?" + new URLSearchParams(data).toString();
  } else {
    init.body = new URLSearchParams(data);
    init.headers["Content-Type"] = "application/x-www-form-urlencoded";
  }
  into.setAttribute("aria-busy", "true");
  try {
    const response = await fetch(url, init);
    into.innerHTML = await response.text();
    if (method === "GET") history.replaceState(null, "", url);
  } finally {
    into.removeAttribute("aria-busy");
  }
});
