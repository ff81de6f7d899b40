// Reference OpenIGTLink client for navsvc's interoperability tests, built on the
// OpenIGTLink C++ library (Debian libopenigtlink-dev), after the library's example
// Receiver/ReceiveClient.cxx. Output is one tab-separated line per item on stdout.
//
//   igtl_ref_client recv HOST PORT N [QUERY...]
//       connect, send each QUERY (GET_TRANS:NAME, GET_POINT:NAME, GET_TRAJ:NAME,
//       GET_STATUS:NAME, STT_TDATA:MS, STP_TDATA), then receive N messages, unpack each
//       with the library (CRC checked) and print its content. Exit 3 on a CRC failure.
//   igtl_ref_client pack
//       print the hex bytes of messages packed by the library with fixed content
//       (for byte-for-byte comparison with navsvc's encoder).
//
// Build: g++ -O1 -I/usr/include/openigtlink igtl_ref_client.cxx -lOpenIGTLink -o igtl_ref_client

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "igtlClientSocket.h"
#include "igtlMessageHeader.h"
#include "igtlPointMessage.h"
#include "igtlStatusMessage.h"
#include "igtlStringMessage.h"
#include "igtlTrackingDataMessage.h"
#include "igtlTrajectoryMessage.h"
#include "igtlTransformMessage.h"

static void printMatrix(igtl::Matrix4x4& m) {
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 4; j++) printf("\t%.9g", m[i][j]);
}

static void printHeader(igtl::MessageHeader* h, const char* type) {
  igtl::TimeStamp::Pointer ts = igtl::TimeStamp::New();
  h->GetTimeStamp(ts);
  igtlUint32 sec, nsec;
  ts->GetTimeStamp(&sec, &nsec);
  printf("%s\t%s\t%u.%09u", type, h->GetDeviceName(), sec, nsec);
}

template <class MSG>
static typename MSG::Pointer receiveBody(igtl::Socket* socket, igtl::MessageHeader::Pointer& header) {
  typename MSG::Pointer msg = MSG::New();
  msg->SetMessageHeader(header);
  msg->AllocatePack();
  socket->Receive(msg->GetPackBodyPointer(), msg->GetPackBodySize());
  int c = msg->Unpack(1);
  if (!(c & igtl::MessageHeader::UNPACK_BODY)) {
    printf("CRCFAIL\t%s\t%s\n", header->GetDeviceType(), header->GetDeviceName());
    fflush(stdout);
    exit(3);
  }
  return msg;
}

static int recvMode(const char* host, int port, int count, int nq, char** queries) {
  igtl::ClientSocket::Pointer socket = igtl::ClientSocket::New();
  if (socket->ConnectToServer(host, port) != 0) {
    fprintf(stderr, "cannot connect to %s:%d\n", host, port);
    return 2;
  }
  for (int q = 0; q < nq; q++) {
    std::string query(queries[q]);
    std::string kind = query.substr(0, query.find(':'));
    std::string arg = query.find(':') == std::string::npos ? "" : query.substr(query.find(':') + 1);
    igtl::MessageBase::Pointer msg;
    if (kind == "GET_TRANS") msg = igtl::GetTransformMessage::New();
    else if (kind == "GET_POINT") msg = igtl::GetPointMessage::New();
    else if (kind == "GET_TRAJ") msg = igtl::GetTrajectoryMessage::New();
    else if (kind == "GET_STATUS") msg = igtl::GetStatusMessage::New();
    else if (kind == "STP_TDATA") msg = igtl::StopTrackingDataMessage::New();
    else if (kind == "STT_TDATA") {
      igtl::StartTrackingDataMessage::Pointer stt = igtl::StartTrackingDataMessage::New();
      stt->SetResolution(atoi(arg.c_str()));
      stt->SetCoordinateName("Reference");
      stt->SetDeviceName("NavTargets");
      msg = stt;
      arg = "NavTargets";
    } else {
      fprintf(stderr, "unknown query %s\n", queries[q]);
      return 2;
    }
    msg->SetDeviceName(arg.c_str());
    msg->Pack();
    socket->Send(msg->GetPackPointer(), msg->GetPackSize());
  }

  igtl::MessageHeader::Pointer header = igtl::MessageHeader::New();
  for (int n = 0; n < count; n++) {
    header->InitPack();
    int r = socket->Receive(header->GetPackPointer(), header->GetPackSize());
    if (r != header->GetPackSize()) {
      fprintf(stderr, "connection closed after %d messages\n", n);
      return 4;
    }
    header->Unpack();
    const char* type = header->GetDeviceType();
    if (strcmp(type, "TRANSFORM") == 0) {
      igtl::TransformMessage::Pointer msg = receiveBody<igtl::TransformMessage>(socket, header);
      igtl::Matrix4x4 m;
      msg->GetMatrix(m);
      printHeader(header, type);
      printMatrix(m);
      printf("\n");
    } else if (strcmp(type, "STATUS") == 0) {
      igtl::StatusMessage::Pointer msg = receiveBody<igtl::StatusMessage>(socket, header);
      printHeader(header, type);
      printf("\t%d\t%lld\t%s\t%s\n", msg->GetCode(), (long long)msg->GetSubCode(),
             msg->GetErrorName(), msg->GetStatusString());
    } else if (strcmp(type, "STRING") == 0) {
      igtl::StringMessage::Pointer msg = receiveBody<igtl::StringMessage>(socket, header);
      printHeader(header, type);
      printf("\t%d\t%s\n", msg->GetEncoding(), msg->GetString());
    } else if (strcmp(type, "POINT") == 0) {
      igtl::PointMessage::Pointer msg = receiveBody<igtl::PointMessage>(socket, header);
      printHeader(header, type);
      printf("\t%d\n", msg->GetNumberOfPointElement());
      for (int i = 0; i < msg->GetNumberOfPointElement(); i++) {
        igtl::PointElement::Pointer e;
        msg->GetPointElement(i, e);
        igtlFloat32 p[3];
        e->GetPosition(p);
        printf("POINT_EL\t%s\t%s\t%.9g\t%.9g\t%.9g\t%.9g\t%s\n", e->GetName(), e->GetGroupName(),
               p[0], p[1], p[2], e->GetRadius(), e->GetOwner());
      }
    } else if (strcmp(type, "TRAJ") == 0) {
      igtl::TrajectoryMessage::Pointer msg = receiveBody<igtl::TrajectoryMessage>(socket, header);
      printHeader(header, type);
      printf("\t%d\n", msg->GetNumberOfTrajectoryElement());
      for (int i = 0; i < msg->GetNumberOfTrajectoryElement(); i++) {
        igtl::TrajectoryElement::Pointer e;
        msg->GetTrajectoryElement(i, e);
        igtlFloat32 a[3], b[3];
        e->GetEntryPosition(a);
        e->GetTargetPosition(b);
        printf("TRAJ_EL\t%s\t%s\t%d\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\t%.9g\t%s\n", e->GetName(),
               e->GetGroupName(), (int)e->GetType(), a[0], a[1], a[2], b[0], b[1], b[2],
               e->GetRadius(), e->GetOwner());
      }
    } else if (strcmp(type, "TDATA") == 0) {
      igtl::TrackingDataMessage::Pointer msg = receiveBody<igtl::TrackingDataMessage>(socket, header);
      printHeader(header, type);
      printf("\t%d\n", msg->GetNumberOfTrackingDataElements());
      for (int i = 0; i < msg->GetNumberOfTrackingDataElements(); i++) {
        igtl::TrackingDataElement::Pointer e;
        msg->GetTrackingDataElement(i, e);
        igtl::Matrix4x4 m;
        e->GetMatrix(m);
        printf("TDATA_EL\t%s\t%d", e->GetName(), (int)e->GetType());
        printMatrix(m);
        printf("\n");
      }
    } else if (strcmp(type, "RTS_TDATA") == 0) {
      igtl::RTSTrackingDataMessage::Pointer msg = receiveBody<igtl::RTSTrackingDataMessage>(socket, header);
      printHeader(header, type);
      printf("\t%d\n", (int)msg->GetStatus());
    } else {
      printHeader(header, type);
      printf("\tskipped\n");
      socket->Skip(header->GetBodySizeToRead(), 0);
    }
    fflush(stdout);
  }
  socket->CloseSocket();
  return 0;
}

static void printHex(const char* label, igtl::MessageBase* msg) {
  igtl::TimeStamp::Pointer ts = igtl::TimeStamp::New();
  ts->SetTime((igtlUint32)1700000000u, (igtlUint32)500000000u);
  msg->SetTimeStamp(ts);
  msg->Pack();
  const unsigned char* p = (const unsigned char*)msg->GetPackPointer();
  printf("%s\t", label);
  for (int i = 0; i < msg->GetPackSize(); i++) printf("%02x", p[i]);
  printf("\n");
}

static int packMode() {
  igtl::Matrix4x4 m = {{0.0f, -1.0f, 0.0f, 12.5f}, {1.0f, 0.0f, 0.0f, -7.25f},
                       {0.0f, 0.0f, 1.0f, 301.0f}, {0.0f, 0.0f, 0.0f, 1.0f}};

  igtl::StatusMessage::Pointer status = igtl::StatusMessage::New();
  status->SetDeviceName("NavStatus");
  status->SetCode(igtl::StatusMessage::STATUS_NOT_READY);
  status->SetSubCode(-5);
  status->SetErrorName("NoValidTarget");
  status->SetStatusString("no valid target: awaiting approval");
  printHex("STATUS", status);

  igtl::TrajectoryMessage::Pointer traj = igtl::TrajectoryMessage::New();
  traj->SetDeviceName("Drill1");
  igtl::TrajectoryElement::Pointer te = igtl::TrajectoryElement::New();
  te->SetName("Drill1");
  te->SetGroupName("Trajectory");
  te->SetType(igtl::TrajectoryElement::TYPE_ENTRY_TARGET);
  te->SetRGBA(255, 0, 0, 255);
  te->SetEntryPosition(10.5f, -20.25f, 30.0f);
  te->SetTargetPosition(15.0f, 25.5f, 90.125f);
  te->SetRadius(1.5f);
  te->SetOwner("Reference");
  traj->AddTrajectoryElement(te);
  printHex("TRAJ", traj);

  igtl::TrackingDataMessage::Pointer tdata = igtl::TrackingDataMessage::New();
  tdata->SetDeviceName("NavTargets");
  igtl::TrackingDataElement::Pointer de = igtl::TrackingDataElement::New();
  de->SetName("Drill1");
  de->SetType(igtl::TrackingDataElement::TYPE_6D);
  de->SetMatrix(m);
  tdata->AddTrackingDataElement(de);
  printHex("TDATA", tdata);

  igtl::StartTrackingDataMessage::Pointer stt = igtl::StartTrackingDataMessage::New();
  stt->SetDeviceName("NavTargets");
  stt->SetResolution(50);
  stt->SetCoordinateName("Reference");
  printHex("STT_TDATA", stt);

  igtl::RTSTrackingDataMessage::Pointer rts = igtl::RTSTrackingDataMessage::New();
  rts->SetDeviceName("NavTargets");
  rts->SetStatus(1);
  printHex("RTS_TDATA", rts);

  igtl::StopTrackingDataMessage::Pointer stp = igtl::StopTrackingDataMessage::New();
  stp->SetDeviceName("NavTargets");
  printHex("STP_TDATA", stp);

  igtl::GetTransformMessage::Pointer gt = igtl::GetTransformMessage::New();
  gt->SetDeviceName("Drill1ToReference");
  printHex("GET_TRANS", gt);

  igtl::GetStatusMessage::Pointer gs = igtl::GetStatusMessage::New();
  gs->SetDeviceName("NavStatus");
  printHex("GET_STATUS", gs);

  igtl::TransformMessage::Pointer tr = igtl::TransformMessage::New();
  tr->SetDeviceName("Drill1ToReference");
  tr->SetMatrix(m);
  printHex("TRANSFORM", tr);
  return 0;
}

int main(int argc, char* argv[]) {
  if (argc >= 2 && strcmp(argv[1], "pack") == 0) return packMode();
  if (argc >= 5 && strcmp(argv[1], "recv") == 0)
    return recvMode(argv[2], atoi(argv[3]), atoi(argv[4]), argc - 5, argv + 5);
  fprintf(stderr, "usage: %s recv HOST PORT N [QUERY...] | %s pack\n", argv[0], argv[0]);
  return 2;
}
